"""The BatchTopK family's inference threshold, calibrated after training with the weights frozen.

During training a BatchTopK-style SAE keeps the k x B largest activations of each batch; at
inference it needs one global threshold on the pre-activations. A running estimate lags the
weights (it averages over a training run whose early steps saw another SAE), so the exported
threshold is set afterwards instead: over N rows of the training cache, the threshold that keeps
exactly the k x N largest post-activations gives a mean L0 of k on those rows (for Matryoshka the
same over its whole dictionary). A disjoint slice of the same size checks it. The record of what
was done goes into ``sae_meta.json`` as ``threshold_calibration``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fc_base.errors import ConfigError
from trainers.training.config import TrainConfig
from trainers.training.recipe import build_options, get_recipe

FAMILY_SECTION = "batchtopk"
"""The option section of the BatchTopK family (``trainers.saes.batchtopk.BatchTopKOptions``). The
recipes that read it have a threshold to calibrate, and its ``calibration_rows`` sizes the slices;
it is found by name through the registry, so the machinery names no architecture."""
DEFAULT_ROWS = 32768
"""Rows of the calibration slice (and again of the check slice)."""
CHUNK_ROWS = 2048
"""Rows encoded at a time: bounds memory at CHUNK_ROWS x d_sae floats."""


@dataclass(frozen=True)
class ThresholdCalibration:
    """What the calibration did (``sae_meta.json``'s ``threshold_calibration``)."""

    target_l0: float
    """The L0 aimed at (the SAE's k)."""
    rows: int
    """Rows of the calibration slice."""
    check_rows: int
    """Rows of the disjoint check slice."""
    row_ranges: list[list[int]]
    """[start, stop) of the calibration and the check slice in the activation source."""
    l0_calibration: float
    """Mean L0 with the new threshold on the calibration rows."""
    l0_check: float
    """Mean L0 with the new threshold on the check rows."""
    threshold: float
    """The calibrated threshold on the pre-activations."""
    old_threshold: float
    """The threshold training ended with (the running estimate)."""
    l0_check_old: float
    """Mean L0 with the old threshold on the check rows."""

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_slices(n_rows: int, rows: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The calibration and check slices: the last 2 x ``rows`` rows of the source (the store is
    shuffled across documents when written, so its tail is a sample like any other), or its two
    halves when it holds fewer."""
    if rows <= 0:
        raise ConfigError(f"threshold calibration needs rows > 0, got {rows}")
    if n_rows < 2:
        raise ConfigError(f"threshold calibration needs at least 2 activation rows, the source has {n_rows}")
    per_slice = min(rows, n_rows // 2)
    check_start = n_rows - per_slice
    return (check_start - per_slice, check_start), (check_start, n_rows)


def _pre_acts_chunks(weights: dict[str, torch.Tensor], source, start: int, stop: int):
    """Pre-activations of exported (raw-input) weights, CHUNK_ROWS rows at a time."""
    W_enc_DM, b_enc_M, b_dec_D = (weights[n].float() for n in ("W_enc", "b_enc", "b_dec"))
    for lo in range(start, stop, CHUNK_ROWS):
        x_BD = torch.from_numpy(np.ascontiguousarray(source.read_rows(lo, min(lo + CHUNK_ROWS, stop)), dtype=np.float32))
        if not torch.isfinite(x_BD).all():
            raise ValueError(f"activation rows {lo}..{min(lo + CHUNK_ROWS, stop)} hold inf/NaN; cannot calibrate")
        yield torch.addmm(b_enc_M, x_BD - b_dec_D, W_enc_DM)


def _largest_values(weights, source, start: int, stop: int, count: int, per_row: int) -> torch.Tensor:
    """The ``count + 1`` largest pre-activations over the rows, exactly: each row offers its top
    ``per_row``; if a row's whole offer reaches the result, the offer was too small, and the
    search runs again with twice as many (a few rows of unusual norm can do that)."""
    d_sae = weights["W_enc"].shape[1]
    while True:
        per_row = min(per_row, d_sae)
        offers = [pre_BM.topk(per_row, dim=1, sorted=True).values
                  for pre_BM in _pre_acts_chunks(weights, source, start, stop)]
        offer_RC = torch.cat(offers)
        top_N = offer_RC.reshape(-1).topk(min(count + 1, offer_RC.numel()), sorted=True).values
        if per_row == d_sae or not bool((offer_RC[:, -1] >= top_N[-1]).any()):
            return top_N
        per_row *= 2


def _mean_l0s(weights, source, start: int, stop: int, thresholds: list[float]) -> list[float]:
    """Mean L0 on the rows under each threshold, from one pass of encoding."""
    fired = [0] * len(thresholds)
    for pre_BM in _pre_acts_chunks(weights, source, start, stop):
        fired = [f + int((pre_BM > t).sum()) for f, t in zip(fired, thresholds)]
    return [f / max(stop - start, 1) for f in fired]


def calibrate_threshold(weights: dict[str, torch.Tensor], source, k: float, *, rows: int = DEFAULT_ROWS,
                        old_threshold: float | None = None) -> ThresholdCalibration:
    """The threshold that gives a mean L0 of ``k`` on the calibration slice of ``source`` (an
    ActivationSource of raw activations) for exported ``weights``, with its record. The threshold
    lies halfway between the (kN)-th and (kN+1)-th largest pre-activations, so exactly kN entries
    clear it; it never goes below 0 (codes stay non-negative)."""
    (c0, c1), (h0, h1) = calibration_slices(source.n_rows, rows)
    n = c1 - c0
    count = int(round(k * n))
    if count <= 0:
        raise ConfigError(f"threshold calibration needs k * rows >= 1, got k={k}, rows={n}")
    top_N = _largest_values(weights, source, c0, c1, count, per_row=max(1, int(4 * k)))
    if top_N.numel() <= count:  # fewer entries than kN in all: keep every positive one
        threshold = 0.0
    else:
        threshold = max(0.0, float((top_N[count - 1] + top_N[count]) / 2))
    old = float(weights["threshold"][0]) if old_threshold is None else old_threshold
    l0_check, l0_check_old = _mean_l0s(weights, source, h0, h1, [threshold, old])
    # Every entry above the threshold is among the values found (the search is exact), so the
    # calibration rows' L0 needs no second pass.
    return ThresholdCalibration(
        target_l0=float(k), rows=n, check_rows=h1 - h0, row_ranges=[[c0, c1], [h0, h1]],
        l0_calibration=int((top_N > threshold).sum()) / n, l0_check=l0_check, threshold=threshold,
        old_threshold=old, l0_check_old=l0_check_old)


def require_calibrated_family(name: str, trainer: str) -> None:
    """One error line for an SAE whose recipe has no threshold to calibrate."""
    if not is_calibrated_family(trainer):
        raise ConfigError(f"{name}: trainer {trainer!r} has no learned threshold to calibrate "
                          "(only the BatchTopK family: batchtopk, matryoshka and their FC variants)")


def is_calibrated_family(trainer: str) -> bool:
    """Whether SAEs of this recipe have a threshold the project calibrates: the recipes that read
    the BatchTopK family's options (BatchTopK, Matryoshka and their FC variants)."""
    return any(cls.section == FAMILY_SECTION for cls in get_recipe(trainer).options)


def calibration_rows_for(cfg: TrainConfig) -> int:
    """``train.options.batchtopk.calibration_rows`` of a train config."""
    return build_options(FAMILY_SECTION, cfg.options.get(FAMILY_SECTION, {})).calibration_rows


def calibration_rows_of(folder: Path) -> int:
    """The calibration rows the SAE was trained with (``train.options.batchtopk.calibration_rows``
    in its train_config.json), else the default."""
    import json

    from fc_base.sae_folder import TRAIN_CONFIG_FILE

    path = Path(folder) / TRAIN_CONFIG_FILE
    if path.is_file():
        options = json.loads(path.read_text()).get("options", {})
        return int(options.get(FAMILY_SECTION, {}).get("calibration_rows", DEFAULT_ROWS))
    return DEFAULT_ROWS


def calibrate_folder(folder: str | Path, source, *, rows: int | None = None) -> ThresholdCalibration:
    """Re-calibrate a finished SAE folder in place from ``source`` (raw activations of the SAE's
    model and hook; the caller checks that). Idempotent: the old threshold recorded is the one
    training ended with, kept from an earlier calibration, so a second call writes the same bytes.
    ``sae_meta.json`` is written before the weights: if the weights' write is interrupted, the
    record names a threshold the weights do not hold yet and a rerun completes it."""
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    from fc_base.io import write_atomic
    from fc_base.sae_folder import WEIGHTS_FILE, SAEFolderError, SAEMeta

    folder = Path(folder)
    meta = SAEMeta.read(folder)
    require_calibrated_family(meta.name, meta.trainer)
    if meta.k is None:
        raise SAEFolderError(f"{meta.name}: sae_meta.json has no k to calibrate the threshold for")
    if source.d_model != meta.d_in:
        raise ConfigError(f"{meta.name}: the activations have d_model {source.d_model}, the SAE d_in {meta.d_in}")
    weights = load_file(str(folder / WEIGHTS_FILE))
    if "threshold" not in weights:
        raise SAEFolderError(f"{meta.name}: {WEIGHTS_FILE} holds no threshold tensor")
    earlier = meta.threshold_calibration or {}
    record = calibrate_threshold(weights, source, meta.k, rows=rows or calibration_rows_of(folder),
                                 old_threshold=earlier.get("old_threshold"))
    replace(meta, threshold_calibration=record.to_dict()).write(folder)
    weights["threshold"] = torch.full((meta.d_sae,), record.threshold, dtype=torch.float32)
    write_atomic(folder / WEIGHTS_FILE, lambda tmp: save_file(weights, str(tmp)))
    return record
