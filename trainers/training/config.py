"""Training configuration: what SAEs to train and how."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from fc_base.errors import ConfigError
from fc_base.errors import check as _check
from fc_base.options import resolve_sections, upgrade_legacy
from trainers.training.recipe import build_options, option_sections, recipe_names

TrainConfigError = ConfigError  # the name older code and tests catch

# Flat fields of earlier configs -> (option section, field); old config.json files still load.
LEGACY_FIELDS = {
    "auxk_alpha": ("auxk", "alpha"), "auxk_k": ("auxk", "k"), "l1_coeff": ("relu_l1", "l1_coeff"),
    "batchtopk_threshold_beta": ("batchtopk", "threshold_beta"),
    "matryoshka_fractions": ("matryoshka", "group_fractions"),
    "split_z": ("fc", "z"), "max_split_frac": ("fc", "max_split_frac"), "dead_freq": ("fc", "dead_freq"),
    "split_min_rows": ("fc", "min_rows"),
}


@dataclass
class TrackerConfig:
    beta: float = 0.99
    """EMA decay of the frequency / consistency statistics."""
    tau_act: float = 0.0
    """A latent counts as active when |a| > tau_act."""
    mode: str = "direction"
    """Consistency definition: ``direction`` (mean resultant length of unit input directions) or
    ``seed`` (1 / (1 + mean variance of raw inputs))."""
    projection_dim: int | None = None
    """Optional fixed random projection of directions to this many dims (memory O(m*p))."""
    hole_rows: int = 256
    """Rows per batch for the hole statistics along each latent's own decoder (hole_rate, hole_score;
    one hole_rows x M x D matmul per step; 0: off)."""
    suppression_every: int = 0
    """Steps between encoder-suppression computations at tracker snapshots (weights only, O(M^2 D));
    0: only at the last snapshot."""
    neighbours: int = 0
    """Decoder neighbours per latent for the exclusion statistic (co-firing counted on the hole_rows
    sample; 0: off)."""
    neighbour_every: int = 250
    """Steps between refreshes of the decoder neighbours (O(M^2 D) each)."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.beta < 1.0, f"train.tracker.beta must be in [0, 1), got {self.beta}")
        _check(self.tau_act >= 0.0, f"train.tracker.tau_act must be >= 0, got {self.tau_act}")
        _check(self.mode in ("direction", "seed"),
               f"train.tracker.mode must be direction or seed, got {self.mode!r}")
        _check(self.projection_dim is None or self.projection_dim > 0,
               f"train.tracker.projection_dim must be None or > 0, got {self.projection_dim}")
        _check(self.hole_rows >= 0, f"train.tracker.hole_rows must be >= 0, got {self.hole_rows}")
        _check(self.suppression_every >= 0, f"train.tracker.suppression_every must be >= 0, got {self.suppression_every}")
        _check(self.neighbours >= 0, f"train.tracker.neighbours must be >= 0, got {self.neighbours}")
        _check(self.neighbours == 0 or self.hole_rows > 0,
               "train.tracker.neighbours needs train.tracker.hole_rows > 0 (co-firing is counted on that sample)")
        _check(self.neighbour_every > 0, f"train.tracker.neighbour_every must be > 0, got {self.neighbour_every}")


@dataclass
class SweepPoint:
    """One point of an L0 sweep: a label, the k of the TopK-family recipes and option overrides
    (e.g. ``relu_l1.l1_coeff`` chosen to land near that k)."""

    label: str
    """Part of each SAE's name (``<trainer>_<label>_s<seed>``): letters, digits, ``-``."""
    k: int | None = None
    """Active latents per token at this point (None: ``train.k``)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Recipe option sections merged over ``train.options`` at this point."""
    trainers: list[str] | None = None
    """Trainers run at this point (None: all of ``train.trainers``); thins an expensive grid."""
    seeds: list[int] | None = None
    """Seeds run at this point (None: all of ``train.seeds``)."""

    def __post_init__(self) -> None:
        _check(bool(self.label) and all(c.isalnum() or c == "-" for c in self.label),
               f"train.sweep: label must be letters, digits or '-', got {self.label!r}")
        _check(self.k is None or (isinstance(self.k, int) and self.k > 0),
               f"train.sweep[{self.label}].k must be a positive int, got {self.k!r}")
        _check(self.trainers is None or len(self.trainers) > 0, f"train.sweep[{self.label}].trainers is empty")
        _check(self.seeds is None or len(self.seeds) > 0, f"train.sweep[{self.label}].seeds is empty")


class TrainJob(NamedTuple):
    """One SAE of a run: its recipe, seed and sweep point ('' without a sweep)."""

    trainer: str
    seed: int
    point: str = ""


@dataclass
class TrainConfig:
    trainers: list[str] = field(default_factory=lambda: ["topk", "fc_topk"])
    """Trainer recipes to run (``fc-sae train --help`` lists them); each is trained once per seed."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Seeds; every trainer gets every seed so comparisons are seed-matched."""
    d_sae: int = 4096
    """Dictionary width (latents)."""
    k: int = 32
    """Active latents per token for TopK-family trainers (the L0 target)."""
    n_tokens: int = 1_000_000
    """Training tokens (rows drawn from the activation cache; more than the cache holds means
    several epochs, each in a fresh shuffled order)."""
    batch_size: int = 1024
    """Rows per optimiser step."""
    lr: float = 4e-4
    """Adam learning rate (peak)."""
    adam_beta1: float = 0.9
    """Adam first-moment decay."""
    adam_beta2: float = 0.999
    """Adam second-moment decay."""
    warmup_frac: float = 0.05
    """Fraction of the steps spent on a linear learning-rate warm-up from 0."""
    decay_start_frac: float = 0.8
    """Fraction of the steps after which the learning rate decays linearly to 0."""
    dead_after_tokens: int = 200_000
    """A latent that has not fired for this many tokens counts as dead (AuxK, resampling)."""
    resample_every: int = 250
    """Steps between maintenance events of recipes that have one (FC splits, dead-latent resampling)."""
    resample_stop_frac: float = 0.8
    """No splits or resampling after this fraction of training (the SAE must settle)."""
    reservoir_rows: int = 8192
    """Recent inputs kept for maintenance (split candidates' activation patterns, resampling)."""
    norm_rows: int = 32768
    """Rows read from the start of the cache to estimate the input normalisation factor."""
    log_every: int = 10
    """Steps between lines of train_log.jsonl."""
    heldout_rows: int = 0
    """Rows at the end of the activation cache that training never reads (not for batches, the
    normalisation factor, the reservoir or the threshold calibration); at every log step the SAE is
    scored on them (``heldout_explained_variance``, ``heldout_mse``, ``heldout_l0``,
    ``heldout_dead_frac`` in train_log.jsonl). 0: none, and training reads every row as it always did
    (existing SAEs and their checkpoints stay valid). Each log step encodes these rows once."""
    tensorboard: bool = False
    """Also write every train_log.jsonl line as TensorBoard scalars under ``<SAE folder>/tensorboard``
    (``torch.utils.tensorboard``; needs the ``tensorboard`` package; offline)."""
    snapshot_every: int = 50
    """Steps between tracker snapshots in fc_history.parquet (and one at the end)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0: none); training resumes from the newest one."""
    keep_checkpoints: int = 1
    """Newest checkpoints kept on disk (each is written to a temporary file and renamed, so one
    is enough to survive a crash)."""
    device: str = "auto"
    """Training device: auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    cpu_threads: int = 0
    """Torch CPU threads while training (0: leave torch's setting). Tiny models train faster on
    one thread: with small matrices, thread synchronisation costs more than it saves."""
    precision: str = "float32"
    """Arithmetic of the training step on CPU (CUDA always trains under bfloat16 autocast).
    ``float32``: every product in float32. ``bf16``: the large products (encoder pre-activations,
    the dense product behind the TopK values' gradient, the AuxK and BatchTopK encoder products) run
    in bfloat16 under autocast, and the step takes faster routes that round differently: Adam fused,
    the TopK encoder centring its input instead of folding b_dec into a bias, Matryoshka's prefixes
    sharing one gradient product, BatchTopK searching each row's top 4k candidates. Weights, Adam
    moments, losses and the tracker stay float32. On CPUs with AMX-BF16 a step at the experiment's
    shape is about 1.5-1.7x faster for the TopK family, 1.9x BatchTopK, 2.3x Matryoshka
    (benchmarks/train_precision.py); whole SAEs gain less (AuxK, tracker, checkpoints); slower on
    CPUs without bfloat16 matmul units. Either setting gives the same SAE bit for bit when rerun on
    one machine, but not the same SAE as the other."""
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    """FrequencyConsistencyTracker settings (the tracker runs for every trainer)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Recipe option groups by section (auxk, relu_l1, batchtopk, matryoshka, fc, ...): each recipe
    reads only its own; missing fields take their defaults (``fc-sae config show`` prints them all)."""
    trainer_seeds: dict[str, list[int]] = field(default_factory=dict)
    """Seeds of particular trainers (default: ``seeds``); thins the arms a comparison leans on least."""
    sweep: list[SweepPoint] = field(default_factory=list)
    """L0 sweep: every trainer x seed is trained once per point (empty: one SAE per trainer x seed
    at ``k``). Each point may restrict its trainers and seeds to thin the grid."""

    def __post_init__(self) -> None:
        known = recipe_names()
        bad = [t for t in self.trainers if t not in known]
        _check(not bad, f"train.trainers: unknown trainer {bad[0]!r} (allowed: {', '.join(known)})"
               if bad else "")
        _check(len(self.trainers) > 0, "train.trainers must not be empty")
        _check(len(self.seeds) > 0, "train.seeds must not be empty")
        _check(self.d_sae > 0 and 0 < self.k <= self.d_sae,
               f"train.k must be in 1..d_sae, got k={self.k}, d_sae={self.d_sae}")
        _check(self.batch_size > 0, f"train.batch_size must be > 0, got {self.batch_size}")
        _check(self.n_tokens >= self.batch_size,
               f"train.n_tokens ({self.n_tokens}) must be >= train.batch_size ({self.batch_size})")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "train.adam_beta1/2 must be in [0, 1)")
        _check(0 <= self.warmup_frac < 1, f"train.warmup_frac must be in [0, 1), got {self.warmup_frac}")
        _check(self.warmup_frac <= self.decay_start_frac <= 1,
               f"train.decay_start_frac must be in [warmup_frac, 1], got {self.decay_start_frac}")
        _check(self.dead_after_tokens > 0, f"train.dead_after_tokens must be > 0, got {self.dead_after_tokens}")
        _check(self.resample_every > 0, f"train.resample_every must be > 0, got {self.resample_every}")
        _check(0 <= self.resample_stop_frac <= 1, "train.resample_stop_frac must be in [0, 1]")
        _check(self.reservoir_rows >= self.batch_size,
               f"train.reservoir_rows ({self.reservoir_rows}) must be >= train.batch_size ({self.batch_size})")
        _check(self.norm_rows > 0, f"train.norm_rows must be > 0, got {self.norm_rows}")
        _check(isinstance(self.heldout_rows, int) and self.heldout_rows >= 0,
               f"train.heldout_rows must be an int >= 0, got {self.heldout_rows!r}")
        _check(isinstance(self.tensorboard, bool), f"train.tensorboard must be true or false, got {self.tensorboard!r}")
        _check(self.log_every > 0 and self.snapshot_every > 0,
               "train.log_every and train.snapshot_every must be > 0")
        _check(self.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        _check(self.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        _check(self.cpu_threads >= 0, f"train.cpu_threads must be >= 0, got {self.cpu_threads}")
        _check(self.precision in ("float32", "bf16"),
               f"train.precision must be float32 or bf16, got {self.precision!r}")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if isinstance(self.tracker, dict):
            self.tracker = TrackerConfig(**self.tracker)
        self.options = resolve_sections("train", option_sections(), self.options)
        for t, chosen in self.trainer_seeds.items():
            _check(t in self.trainers, f"train.trainer_seeds: {t!r} is not in train.trainers")
            _check(bool(chosen) and set(chosen) <= set(self.seeds),
                   f"train.trainer_seeds[{t}] must be a non-empty subset of train.seeds, got {chosen}")
        self.sweep = [p if isinstance(p, SweepPoint) else SweepPoint(**p) for p in self.sweep]
        labels = [p.label for p in self.sweep]
        _check(len(set(labels)) == len(labels), f"train.sweep labels must be unique, got {labels}")
        for p in self.sweep:
            bad = [t for t in (p.trainers or []) if t not in known]
            _check(not bad, f"train.sweep[{p.label}]: unknown trainer {bad[0]!r}" if bad else "")
            _check(p.k is None or p.k <= self.d_sae, f"train.sweep[{p.label}].k must be <= d_sae ({self.d_sae})")
            resolve_sections(f"train.sweep[{p.label}]", option_sections(), p.options)  # unknown knobs fail here

    def jobs(self) -> list[TrainJob]:
        """Every SAE this config trains, in training order (point, trainer, seed)."""
        def seeds(trainer: str, point: SweepPoint | None) -> list[int]:
            base = (point.seeds if point is not None and point.seeds else None) or self.seeds
            return [s for s in base if s in self.trainer_seeds.get(trainer, base)]

        if not self.sweep:
            return [TrainJob(t, s) for t in self.trainers for s in seeds(t, None)]
        return [TrainJob(t, s, p.label) for p in self.sweep for t in (p.trainers or self.trainers)
                for s in seeds(t, p)]

    def at_point(self, label: str) -> "TrainConfig":
        """This config with one sweep point's k and option overrides applied (and no sweep)."""
        if not label:
            return self
        point = next((p for p in self.sweep if p.label == label), None)
        _check(point is not None, f"no sweep point {label!r} (have: {', '.join(p.label for p in self.sweep)})")
        options = {name: dict(values) for name, values in self.options.items()}
        for name, values in point.options.items():
            options[name] = {**options.get(name, {}), **values}
        return replace(self, k=point.k or self.k, options=options, sweep=[], trainer_seeds={})

    def option(self, cls: type) -> Any:
        """The option group ``cls`` (an ``Options`` dataclass) of this config."""
        return build_options(cls.section, self.options.get(cls.section, {}))

    @classmethod
    def upgrade_legacy(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Move the flat recipe fields of earlier config files into ``options``."""
        return upgrade_legacy(data, LEGACY_FIELDS)

    @property
    def total_steps(self) -> int:
        return self.n_tokens // self.batch_size

