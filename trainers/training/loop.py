"""The one training loop shared by every architecture.

Adam with linear warm-up and linear decay, unit-norm decoder rows kept by projecting out the
gradient's parallel part and renormalising, the FrequencyConsistencyTracker on every step, the
recipe's maintenance hook (FC splitting, dead-latent resampling, ...) every ``resample_every``
steps, checkpoints that resume exactly (model, optimiser, tracker, loader position, RNG, logs), and
a NaN/inf guard that stops with the step and tensor named before anything bad is saved.

``train_sae`` runs named steps: ``_setup`` (build or resume), ``_train_step`` (one optimiser
step), ``_bookkeep`` (tracker, dead counters, reservoir, log), ``_maintain`` (the recipe's hook),
``_checkpoint`` and ``_export``. The loop knows no recipe by name (trainers.training.recipe).
"""
from __future__ import annotations

import dataclasses
import json
import random
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fc_base import sae_folder as folder_schema
from fc_base.io import write_json_atomic, write_parquet_atomic
from fc_base.progress import stage_progress
from fc_base.sae_folder import SAEMeta
from fc_base.torch_utils import resolve_device as _resolve_device_name
from fc_base.torch_utils import slow_cpu_low_precision
from trainers.fc.tracker import FrequencyConsistencyTracker, TrackerStep, encoder_suppression, memory_steps
from trainers.saes.sae import SparseAutoencoder, StepOutput
from trainers.training.calibration import (ThresholdCalibration, calibrate_threshold, calibration_rows_for,
                                           is_calibrated_family)
from trainers.training.checkpoint import load_latest_checkpoint, save_checkpoint
from trainers.training.config import TrainConfig
from trainers.training.data import ActivationSource, first_rows, norm_scale_of
from trainers.training.events import check_events, no_events, write_event_tables
from trainers.training.export import ModelInfo, export_sae, history_frame
from trainers.training.heldout import heldout_scores, split_heldout
from trainers.training.tensorboard import open_writer, require_tensorboard, write_scalars
from trainers.training.recipe import MaintenanceContext, Recipe, get_recipe, l0_target_of

# Config fields that may change between a checkpoint and its resume without changing the result.
RESUME_FREE_FIELDS = {"trainers", "seeds", "device", "checkpoint_every", "keep_checkpoints", "cpu_threads",
                      "tensorboard"}
# Fields added after SAEs were trained, with the value that means "as before": at that value they are
# left out of checkpoints and train_config.json, so earlier checkpoints resume and files keep their bytes.
LATER_FIELD_DEFAULTS = {"heldout_rows": 0, "tensorboard": False}


class TrainingDivergedError(RuntimeError):
    """Training produced inf/NaN; the message names the step and the tensor."""


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    final_l0: float
    norm_scale: float
    events: dict[str, int]
    """Rows per maintenance event table (``n_<name>`` of the last log line)."""


def resolve_device(name: str) -> torch.device:
    return torch.device(_resolve_device_name(name))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warmup = int(cfg.warmup_frac * total)
    decay_start = int(cfg.decay_start_frac * total)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if step >= decay_start and total > decay_start:
        return cfg.lr * (total - step) / (total - decay_start)
    return cfg.lr


def _config_record(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as a dict without the later fields at their "as before" value."""
    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if not (k in LATER_FIELD_DEFAULTS and v == LATER_FIELD_DEFAULTS[k])}


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in _config_record(cfg).items() if k not in RESUME_FREE_FIELDS}


class _Run:
    """Mutable training state; everything in it goes into a checkpoint."""

    def __init__(self, cfg: TrainConfig, trainer: str, seed: int, source: ActivationSource, device: torch.device):
        self.cfg, self.trainer, self.seed, self.device = cfg, trainer, seed, device
        self.recipe: Recipe = get_recipe(trainer)
        d_in = source.d_model
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        first_rows_ND = first_rows(source, cfg.norm_rows)
        self.norm_scale = norm_scale_of(first_rows_ND)
        self.model: SparseAutoencoder = self.recipe.build(d_in, cfg, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            self.model.b_dec.copy_((first_rows_ND * self.norm_scale).mean(0))
        self.model.to(device)
        # foreach gives the per-tensor loop's floats bit for bit, faster; fused rounds differently,
        # so only the bf16 setting (which changes the floats anyway) uses it.
        fused = cfg.precision == "bf16"
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                          foreach=None if fused else True, fused=fused or None)
        t = cfg.tracker
        self.tracker = FrequencyConsistencyTracker(cfg.d_sae, d_in, beta=t.beta, tau_act=t.tau_act, mode=t.mode,
                                                   projection_dim=t.projection_dim, device=device,
                                                   hole_rows=t.hole_rows, neighbours=t.neighbours)
        self.tokens_since_fired_M = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
        self.touched_at_M = torch.full((cfg.d_sae,), -(10**9), dtype=torch.long)
        self.reservoir_RD = torch.zeros(cfg.reservoir_rows, d_in, device=device)
        self.reservoir_filled = 0
        self.resample_gen = torch.Generator().manual_seed(seed + 1)
        self.step = 0
        self.history: list[dict[str, np.ndarray]] = []
        self.events: dict[str, list[dict]] = no_events()
        self.n_resampled = 0
        self.recent_l0: deque[float] = deque(maxlen=50)
        # Not in checkpoints: the held-out rows are read again from the cache, the writer reopened.
        self.heldout_HD: torch.Tensor | None = None
        self.tensorboard = None

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "trainer": self.trainer, "seed": self.seed, "config": _comparable(self.cfg),
                "norm_scale": self.norm_scale, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "tracker": self.tracker.state_dict(),
                "tokens_since_fired": self.tokens_since_fired_M, "touched_at": self.touched_at_M, "reservoir": self.reservoir_RD,
                "reservoir_filled": self.reservoir_filled, "resample_gen": self.resample_gen.get_state(),
                "history": self.history, "events": self.events,
                "n_resampled": self.n_resampled,
                "recent_l0": list(self.recent_l0),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}

    def load(self, ckpt: dict[str, Any]) -> None:
        if ckpt["trainer"] != self.trainer or ckpt["seed"] != self.seed or ckpt["config"] != _comparable(self.cfg):
            raise ValueError("checkpoint was written with a different training config; "
                             "delete the SAE's checkpoints/ folder to start over")
        self.step, self.norm_scale = ckpt["step"], ckpt["norm_scale"]
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.tracker.load_state_dict(ckpt["tracker"])
        self.tokens_since_fired_M = ckpt["tokens_since_fired"].to(self.device)
        self.touched_at_M = ckpt["touched_at"]
        self.reservoir_RD = ckpt["reservoir"].to(self.device)
        self.reservoir_filled = ckpt["reservoir_filled"]
        self.resample_gen.set_state(ckpt["resample_gen"])
        self.history, self.n_resampled = ckpt["history"], ckpt["n_resampled"]
        # Checkpoints written before the event tables were generic hold splits and repairs at top level.
        saved = ckpt.get("events") or {"splits": ckpt.get("splits", []), "repairs": ckpt.get("repairs", [])}
        self.events = {**no_events(), **saved}
        self.recent_l0 = deque(ckpt["recent_l0"], maxlen=50)
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def _check_finite(step: int, name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise TrainingDivergedError(f"step {step}: {name} contains inf/NaN; training stopped, nothing saved")


@torch.no_grad()
def _check_parameters(step: int, model: SparseAutoencoder) -> None:
    # One reduction per tensor (inf/NaN survive a sum); the per-tensor search runs only on failure.
    if bool(torch.isfinite(torch.stack([p.data.sum() for p in model.parameters()])).all()):
        return
    for name, param in model.named_parameters():
        _check_finite(step, f"parameter {name}", param.data)
    raise TrainingDivergedError(f"step {step}: parameter sum overflowed; training stopped, nothing saved")


def _log_row(run: _Run, out: StepOutput, x_BD: torch.Tensor, l0: float, lr: float) -> dict[str, Any]:
    with torch.no_grad():
        err = (x_BD - out.recon_BD.float()).pow(2).sum()
        total = (x_BD - x_BD.mean(0)).pow(2).sum().clamp_min(1e-12)
        score_M = run.tracker.absorption_score
        alive = (run.tokens_since_fired_M < run.cfg.dead_after_tokens).float().mean()
        return {"step": run.step, "tokens": run.step * run.cfg.batch_size, "loss": float(out.loss.detach()),
                "mse": float(out.mse.detach()), "aux_loss": float(out.aux_loss.detach()), "l0": l0, "frac_alive": float(alive),
                "explained_variance": float(1 - err / total), "lr": lr,
                "mean_frequency": float(run.tracker.frequency.mean()),
                "mean_consistency": float(run.tracker.consistency.mean()),
                "mean_absorption_score": float(score_M.mean()), "max_absorption_score": float(score_M.max()),
                **{f"n_{name}": len(rows) for name, rows in run.events.items()}, "n_resampled": run.n_resampled,
                **run.model.log_stats(),
                **(heldout_scores(run.model, run.heldout_HD, run.norm_scale, run.device)
                   if run.heldout_HD is not None else {})}


def _snapshot(run: _Run) -> dict[str, np.ndarray]:
    """Every tracker statistic per latent; encoder suppression (O(M^2 D)) when due, else NaN."""
    stats = {name: t.cpu().numpy() for name, t in run.tracker.statistics().items()}
    every = run.cfg.tracker.suppression_every
    if run.step == run.cfg.total_steps or (every and run.step % every == 0):
        stats["encoder_suppression"] = encoder_suppression(run.model.W_enc.data, run.model.W_dec.data).cpu().numpy()
    else:
        stats["encoder_suppression"] = np.full(run.cfg.d_sae, np.nan, dtype=np.float32)
    return {"step": run.step, **stats}


def _truncate_log(path: Path, keep_below_step: int) -> None:
    """Drop log lines a resumed run will write again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip()
            and json.loads(line)["step"] < keep_below_step]
    path.write_text("".join(line + "\n" for line in kept))


def _maintain(run: _Run) -> None:
    """The recipe's maintenance hook at the scheduled steps (never in the settling phase)."""
    cfg, step = run.cfg, run.step
    maintain = run.recipe.maintain
    if maintain is None or step % cfg.resample_every or step >= cfg.resample_stop_frac * cfg.total_steps:
        return
    # Latents touched within the tracker's memory (1 / (1 - beta) steps) have too little evidence
    # to be judged again, and their low frequency would make them the next slots.
    horizon = memory_steps(cfg.tracker.beta)
    ctx = MaintenanceContext(step=step, cfg=cfg, model=run.model, optimizer=run.optimizer, tracker=run.tracker,
                             reservoir_RD=run.reservoir_RD[:run.reservoir_filled],
                             dead_M=run.tokens_since_fired_M >= cfg.dead_after_tokens,
                             recently_touched_M=step - run.touched_at_M < horizon, generator=run.resample_gen)
    result = maintain(ctx)
    check_events(run.trainer, run.recipe.events, result.events)
    for name, rows in result.events.items():
        run.events[name].extend(rows)
    run.n_resampled += result.n_resampled
    run.touched_at_M[result.touched_L.cpu()] = step
    run.tokens_since_fired_M[result.touched_L.to(run.device)] = 0


def _push_reservoir(run: _Run, x_BD: torch.Tensor) -> None:
    r, b = run.reservoir_RD.shape[0], x_BD.shape[0]
    pos = (run.step * b) % r
    idx = (torch.arange(b, device=run.device) + pos) % r
    run.reservoir_RD[idx] = x_BD.detach().float()
    run.reservoir_filled = min(r, run.reservoir_filled + b)


def train_sae(source: ActivationSource, cfg: TrainConfig, trainer: str, seed: int, out_dir: Path, info: ModelInfo,
              *, on_checkpoint: Callable[[int], None] | None = None, progress: bool = True) -> TrainResult:
    """Train one SAE into ``out_dir`` (resuming from its newest checkpoint) and export it.
    ``sae_meta.json`` is written last: its presence means the SAE is complete."""
    threads_before = torch.get_num_threads()
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    own_loop = get_recipe(trainer).train
    if cfg.tensorboard:
        require_tensorboard()
    # Training reads only the rows before the held-out ones (all rows without them).
    source, heldout_HD = split_heldout(source, cfg.heldout_rows, cfg.batch_size)
    try:
        if own_loop is not None:
            return own_loop(source, cfg, trainer, seed, Path(out_dir), info, progress)
        return _train_sae(source, cfg, trainer, seed, Path(out_dir), info, on_checkpoint, progress, heldout_HD)
    finally:
        torch.set_num_threads(threads_before)


def _train_sae(source: ActivationSource, cfg: TrainConfig, trainer: str, seed: int, out_dir: Path, info: ModelInfo,
               on_checkpoint: Callable[[int], None] | None, progress: bool,
               heldout_HD: torch.Tensor | None = None) -> TrainResult:
    run, log_path = _setup(source, cfg, trainer, seed, out_dir)
    run.heldout_HD = heldout_HD
    run.tensorboard = open_writer(out_dir, run.step) if cfg.tensorboard else None
    try:
        return _train_steps(run, source, cfg, seed, out_dir, info, log_path, on_checkpoint, progress)
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()


def _train_steps(run: _Run, source: ActivationSource, cfg: TrainConfig, seed: int, out_dir: Path, info: ModelInfo,
                 log_path: Path, on_checkpoint: Callable[[int], None] | None, progress: bool) -> TrainResult:
    total = cfg.total_steps
    steps_per_epoch = source.n_rows // cfg.batch_size
    batches = None
    # The bar on stderr, and the run's progress record when the caller opened a fc_base.progress.run_scope.
    with stage_progress(f"train.{out_dir.name}", total, "step", label=f"train {out_dir.name}", initial=run.step,
                        bar=progress) as bar, open(log_path, "a") as log_file:
        while run.step < total:
            if batches is None or run.step % steps_per_epoch == 0:
                batches = source.iter_batches(cfg.batch_size, seed=seed, epoch=run.step // steps_per_epoch,
                                              start_batch=run.step % steps_per_epoch, device=run.device)
            x_BD = next(batches).to(device=run.device, dtype=torch.float32) * run.norm_scale
            out, lr = _train_step(run, x_BD)
            _bookkeep(run, x_BD, out, lr, log_file, bar)
            run.step += 1
            _maintain(run)
            _checkpoint(run, out_dir, on_checkpoint)
            bar.update(1)
        bar.note("export")  # the threshold calibration and the files count toward this SAE's time
        return _export(run, source, out_dir, info)


def _setup(source: ActivationSource, cfg: TrainConfig, trainer: str, seed: int, out_dir: Path) -> tuple[_Run, Path]:
    """Build the run (or resume it from its newest checkpoint) and prepare its log files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if source.n_rows // cfg.batch_size == 0:
        raise ValueError(f"activation cache has {source.n_rows} rows, fewer than train.batch_size={cfg.batch_size}")
    run = _Run(cfg, trainer, seed, source, resolve_device(cfg.device))
    slow = slow_cpu_low_precision("bfloat16" if cfg.precision == "bf16" else "float32", run.device.type)
    if slow:
        print(f"train: train.precision bf16: {slow} (--set train.precision=float32)", file=sys.stderr)
    ckpt = load_latest_checkpoint(out_dir / folder_schema.CHECKPOINTS_DIR)
    if ckpt is not None:
        run.load(ckpt)
    log_path = out_dir / folder_schema.TRAIN_LOG_FILE
    if run.step:
        _truncate_log(log_path, run.step)
    else:
        log_path.write_text("")
    write_json_atomic(out_dir / folder_schema.TRAIN_CONFIG_FILE,
                      {"trainer": trainer, "seed": seed, **_config_record(cfg), "total_steps": cfg.total_steps})
    return run, log_path


def _train_step(run: _Run, x_BD: torch.Tensor) -> tuple[StepOutput, float]:
    """One optimiser step on a normalised batch, guarded against inf/NaN."""
    step, cfg = run.step, run.cfg
    _check_finite(step, "input batch", x_BD)
    lr = lr_at(step, cfg.total_steps, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    dead_M = run.tokens_since_fired_M >= cfg.dead_after_tokens
    low_precision = run.device.type == "cuda" or cfg.precision == "bf16"
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=low_precision):
        out = run.model.training_step(x_BD, dead_M)
    _check_finite(step, "loss", out.loss.detach())
    run.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    run.model.remove_parallel_decoder_grad()
    run.optimizer.step()
    run.model.normalise_decoder()
    run.model.after_step(out)
    _check_parameters(step, run.model)
    return out, lr


def _bookkeep(run: _Run, x_BD: torch.Tensor, out: StepOutput, lr: float, log_file, bar) -> TrackerStep:
    """Tracker update, dead-latent counters, reservoir, the step's log line and tracker snapshots."""
    cfg, step = run.cfg, run.step
    center_D = run.model.b_dec.data
    if cfg.tracker.neighbours and (run.tracker.neighbours_MR is None or step % cfg.tracker.neighbour_every == 0):
        run.tracker.refresh_neighbours(run.model.W_dec.data)
    if out.sparse is not None:
        tstep = run.tracker.update_sparse(x_BD, out.sparse.rows_N, out.sparse.latents_N, out.sparse.values_N,
                                          center_D, W_dec_MD=run.model.W_dec.data)
    else:
        tstep = run.tracker.update(x_BD, out.acts_BM, center_D, W_dec_MD=run.model.W_dec.data)
    run.tokens_since_fired_M += cfg.batch_size
    run.tokens_since_fired_M[tstep.fires_M > 0] = 0
    run.recent_l0.append(tstep.l0)
    _push_reservoir(run, x_BD)
    if step % cfg.log_every == 0 or step == cfg.total_steps - 1:
        row = _log_row(run, out, x_BD, tstep.l0, lr)
        log_file.write(json.dumps(row) + "\n")
        log_file.flush()
        if run.tensorboard is not None:
            write_scalars(run.tensorboard, row)
        bar.set_postfix(mse=f"{float(out.mse.detach()):.3g}", l0=f"{tstep.l0:.1f}",
                        **{name: len(rows) for name, rows in run.events.items() if rows})
    return tstep


def _checkpoint(run: _Run, out_dir: Path, on_checkpoint: Callable[[int], None] | None) -> None:
    """Tracker snapshot and checkpoint at their intervals (after the step's maintenance)."""
    cfg, total = run.cfg, run.cfg.total_steps
    if run.step % cfg.snapshot_every == 0 or run.step == total:
        run.history.append(_snapshot(run))
    if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0 and run.step < total:
        save_checkpoint(out_dir / folder_schema.CHECKPOINTS_DIR, run.step, run.state(), cfg.keep_checkpoints)
        if on_checkpoint is not None:
            on_checkpoint(run.step)


def _calibrate_threshold(run: _Run, source: ActivationSource) -> ThresholdCalibration | None:
    """The BatchTopK family's exported threshold, set with the trained weights frozen so that the
    mean L0 on cache rows is k (trainers.training.calibration); None for other recipes."""
    if not is_calibrated_family(run.trainer):
        return None
    weights = run.model.export_tensors(run.norm_scale)
    record = calibrate_threshold(weights, source, run.cfg.k, rows=calibration_rows_for(run.cfg))
    run.model.threshold.fill_(record.threshold)
    return record


def _export(run: _Run, source: ActivationSource, out_dir: Path, info: ModelInfo) -> TrainResult:
    """Weights, tracker history, event tables, then ``sae_meta.json`` (the completion marker) last."""
    cfg, total = run.cfg, run.cfg.total_steps
    calibration = _calibrate_threshold(run, source)
    export_sae(run.model, out_dir, run.norm_scale, info)
    write_parquet_atomic(out_dir / folder_schema.HISTORY_FILE, history_frame(run.history, cfg.d_sae))
    write_event_tables(out_dir, run.events)
    final_l0 = float(np.mean(run.recent_l0)) if run.recent_l0 else 0.0
    k_value = cfg.k if run.recipe.sparsity == "k" else None
    SAEMeta(name=out_dir.name, trainer=run.trainer, seed=run.seed, architecture=run.model.architecture, k=k_value,
            d_in=source.d_model, d_sae=cfg.d_sae, model_name=info.model_name, model_source=info.model_source,
            layer=info.layer, hook_name=info.hook_name, train_tokens=total * cfg.batch_size,
            l0_target=l0_target_of(run.recipe, cfg),
            final_l0=final_l0, norm_scale=run.norm_scale,
            threshold_calibration=calibration and calibration.to_dict()).write(out_dir)
    return TrainResult(out_dir, total, final_l0, run.norm_scale, {name: len(rows) for name, rows in run.events.items()})
