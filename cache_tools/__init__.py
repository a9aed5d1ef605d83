"""The activation store: sharded Zarr v3 arrays written whole-shard-at-a-time with a manifest,
read back through CRC-checked shard indices and zero-copy memory maps."""
from cache_tools.errors import ShardDamagedError, StoreError
from cache_tools.layout import StoreSpec
from cache_tools.manifest import Manifest, ShardRecord
from cache_tools.reader import ActivationStore, TokenRows, open_store
from cache_tools.writer import StoreWriter, acts_to_storage

__all__ = ["ActivationStore", "Manifest", "ShardDamagedError", "ShardRecord", "StoreError", "StoreSpec",
           "StoreWriter", "TokenRows", "acts_to_storage", "open_store"]
