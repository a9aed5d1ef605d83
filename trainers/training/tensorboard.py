"""Optional TensorBoard logging (``train.tensorboard``): every train_log.jsonl line also as scalars,
written offline under ``<SAE folder>/tensorboard`` by ``torch.utils.tensorboard``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fc_base.errors import ConfigError

TENSORBOARD_DIR = "tensorboard"


def require_tensorboard() -> None:
    """One clear error before training starts when the option is on but the package is missing
    (``torch.utils.tensorboard`` imports ``tensorboard``, which torch does not depend on)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"train.tensorboard needs the tensorboard package, which is not installed here "
                          f"({e}); install it (pip install tensorboard) or set train.tensorboard=false") from None


def open_writer(out_dir: Path, step: int):
    """A SummaryWriter under the SAE folder; a resumed run drops the events at and after ``step``
    (they are written again), as the log lines are."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(out_dir) / TENSORBOARD_DIR), purge_step=step or None)


def write_scalars(writer, row: dict[str, Any]) -> None:
    for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, row["step"])
