"""The trained-SAE folder schema: its file names and ``sae_meta.json``, owned here alone.

A folder ``run_dir/saes/<name>/`` holds ``sae_weights.safetensors`` (W_enc (d_in, d_sae), W_dec
(d_sae, d_in), b_enc, b_dec, optional threshold), SAELens's ``cfg.json`` and ``sae_meta.json``. The
meta file is written last: its presence means the SAE is complete. Trainers write it through
:meth:`SAEMeta.write`, evaluation reads it through :meth:`SAEMeta.read`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from fc_base.io import write_json_atomic

if TYPE_CHECKING:
    import pandas as pd

SAES_DIR = "saes"
META_FILE = "sae_meta.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SAELENS_CFG_FILE = "cfg.json"
TRAIN_CONFIG_FILE = "train_config.json"
TRAIN_LOG_FILE = "train_log.jsonl"
HISTORY_FILE = "fc_history.parquet"
SPLITS_FILE = "splits.parquet"
REPAIRS_FILE = "repairs.parquet"
CHECKPOINTS_DIR = "checkpoints"
ARCHITECTURES = ("topk", "relu", "jumprelu")
"""How evaluation encodes (docs/ARCHITECTURE.md's encoding rule)."""


class SAEFolderError(ValueError):
    """A trained-SAE folder is missing, incomplete or inconsistent."""


def sae_name(trainer: str, seed: int, point: str = "") -> str:
    """The folder name of one trained SAE (``point``: its L0-sweep label, if any)."""
    return f"{trainer}_{point}_s{seed}" if point else f"{trainer}_s{seed}"


@dataclass(frozen=True)
class SAEMeta:
    """The ``sae_meta.json`` of a trained SAE (the fields the evaluation and the results table use)."""

    name: str
    trainer: str
    seed: int
    architecture: str
    k: int | None
    d_in: int
    d_sae: int
    model_name: str
    model_source: str
    layer: int
    hook_name: str
    train_tokens: int
    l0_target: float | None
    final_l0: float | None
    norm_scale: float | None
    threshold_calibration: dict | None = None
    """How the inference threshold of a BatchTopK-family SAE was set after training (rows, target,
    the L0 reached on those rows and on a disjoint check slice, the old threshold); None otherwise."""
    external: dict | None = None
    """Where an SAE trained elsewhere was imported from (source folder, format, sha256); None for the
    SAEs trained here."""

    def write(self, folder: str | Path) -> Path:
        """Write the completion marker (atomically; call it after every other file of the SAE)."""
        record = asdict(self)
        if record["external"] is None:
            del record["external"]  # the meta files of SAEs trained here keep their bytes
        return write_json_atomic(Path(folder) / META_FILE, record)

    @staticmethod
    def read(folder: str | Path) -> "SAEMeta":
        path = Path(folder) / META_FILE
        if not path.is_file():
            raise SAEFolderError(f"{folder} is not a finished SAE folder: {META_FILE} is missing")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SAEFolderError(f"{path} is not valid JSON: {e}") from None
        wanted = {f.name for f in fields(SAEMeta)}
        optional = {"l0_target", "final_l0", "norm_scale", "k", "model_source", "train_tokens", "threshold_calibration",
                    "external"}
        missing = sorted(wanted - set(raw) - optional)
        if missing:
            raise SAEFolderError(f"{path} lacks field(s) {', '.join(missing)}")
        values = {name: raw.get(name) for name in wanted}
        values["model_source"] = values["model_source"] or "auto"
        values["train_tokens"] = int(values["train_tokens"] or 0)
        meta = SAEMeta(**values)
        if meta.architecture not in ARCHITECTURES:
            raise SAEFolderError(f"{path}: architecture must be one of {ARCHITECTURES}, got {meta.architecture!r}")
        if meta.architecture == "topk" and not (isinstance(meta.k, int) and 0 < meta.k <= meta.d_sae):
            raise SAEFolderError(f"{path}: a topk SAE needs k in 1..d_sae, got k={meta.k!r}")
        return meta


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / META_FILE).is_file()


def list_sae_folders(run_dir: str | Path) -> list[Path]:
    """Finished SAE folders of a run (those with ``sae_meta.json``), sorted by name."""
    root = Path(run_dir) / SAES_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if is_complete(p))


def read_train_log(folder: str | Path) -> "pd.DataFrame | None":
    """The SAE's train_log.jsonl as a frame, one row per logged step (None if missing or empty)."""
    import pandas as pd

    path = Path(folder) / TRAIN_LOG_FILE
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(records) if records else None
