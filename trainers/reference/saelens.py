"""``saelens_batchtopk`` and ``saelens_matryoshka``: SAELens's own trainers as reference recipes.

They train SAELens's ``BatchTopKTrainingSAE`` / ``MatryoshkaBatchTopKTrainingSAE`` with its
``SAETrainer`` on the same activation source, in the same batch order, at the same width, k, training
tokens, batch size, peak learning rate, warm-up and decay as our recipes, with SAELens's input
normalisation (``expected_average_only_in``, folded into the saved weights, as ours). The trained SAE
is saved by SAELens (``save_inference_model``: a JumpReLU SAE with the learned threshold) into the
project's SAE folder, so every eval scores it exactly as it scores ours. This is how a reader checks
our trainers: on the same data, the two implementations should agree within seed noise.

No tracker runs here (SAELens's loop is used as is), so these SAEs have no ``fc_history``; training
is not resumable (an interrupted SAE retrains).
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import torch

from fc_base import sae_folder as folder_schema
from fc_base.io import write_json_atomic, write_parquet_atomic
from fc_base.sae_folder import SAEMeta
from trainers.saes.matryoshka import MatryoshkaOptions
from trainers.saes.topk import AuxKOptions
from trainers.training.config import TrainConfig
from trainers.training.data import ActivationSource
from trainers.training.events import write_event_tables
from trainers.training.export import ModelInfo, history_frame
from trainers.training.loop import TrainResult, resolve_device
from trainers.training.recipe import Recipe, register


def _endless_batches(source: ActivationSource, cfg: TrainConfig, seed: int, device: str):
    # The order our loop uses: epoch e is the seeded permutation (seed, e) of the source.
    steps_per_epoch = source.n_rows // cfg.batch_size
    epoch = 0
    while True:
        for i, batch in enumerate(source.iter_batches(cfg.batch_size, seed=seed, epoch=epoch, device=device)):
            if i >= steps_per_epoch:
                break
            yield batch.float()
        epoch += 1


def _matryoshka_widths(cfg: TrainConfig) -> list[int]:
    # The same group sizes as trainers.saes.matryoshka, as SAELens's cumulative widths.
    sizes = [int(round(f * cfg.d_sae)) for f in cfg.option(MatryoshkaOptions).group_fractions]
    sizes[-1] = cfg.d_sae - sum(sizes[:-1])
    return torch.tensor(sizes).cumsum(0).tolist()


def _build(kind: str, d_in: int, cfg: TrainConfig, device: str):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                         MatryoshkaBatchTopKTrainingSAEConfig)

    aux = cfg.option(AuxKOptions)
    # The inference threshold's EMA rate stays SAELens's own default: this is its recipe.
    common = dict(d_in=d_in, d_sae=cfg.d_sae, k=cfg.k, aux_loss_coefficient=aux.alpha, device=device,
                  normalize_activations="expected_average_only_in")
    if kind == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    return MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
        matryoshka_widths=_matryoshka_widths(cfg), **common))


def train_with_saelens(kind: str, source: ActivationSource, cfg: TrainConfig, trainer: str, seed: int,
                       out_dir: Path, info: ModelInfo, progress: bool = True):
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(cfg.device))
    torch.manual_seed(seed)
    sae = _build(kind, source.d_model, cfg, device)
    total = cfg.total_steps
    warmup = int(cfg.warmup_frac * total)
    decay = total - int(cfg.decay_start_frac * total)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total * cfg.batch_size, train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
        lr_end=0.0, lr_warm_up_steps=warmup, lr_decay_steps=decay, adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2, device=device, n_batches_for_norm_estimate=max(1, cfg.norm_rows // cfg.batch_size),
        dead_feature_window=max(1, cfg.dead_after_tokens // cfg.batch_size), logger=LoggingConfig(log_to_wandb=False))
    write_json_atomic(out_dir / folder_schema.TRAIN_CONFIG_FILE,
                      {"trainer": trainer, "seed": seed, "implementation": "sae_lens.SAETrainer",
                       **dataclasses.asdict(cfg), "total_steps": total})
    fitted = SAETrainer(trainer_cfg, sae, _endless_batches(source, cfg, seed, device)).fit()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        fitted.save_inference_model(tmp)
        for name in (folder_schema.WEIGHTS_FILE, folder_schema.SAELENS_CFG_FILE):
            shutil.move(str(Path(tmp) / name), str(out_dir / name))
    write_parquet_atomic(out_dir / folder_schema.HISTORY_FILE, history_frame([], cfg.d_sae))
    write_event_tables(out_dir, {})
    SAEMeta(name=out_dir.name, trainer=trainer, seed=seed, architecture="jumprelu", k=cfg.k, d_in=source.d_model,
            d_sae=cfg.d_sae, model_name=info.model_name, model_source=info.model_source, layer=info.layer,
            hook_name=info.hook_name, train_tokens=total * cfg.batch_size, l0_target=cfg.k, final_l0=None,
            norm_scale=None).write(out_dir)
    return TrainResult(out_dir, total, float("nan"), float("nan"), 0)


def _reference(kind: str, options: tuple[type, ...]) -> Recipe:
    def train(source, cfg, trainer, seed, out_dir, info, progress=True):
        return train_with_saelens(kind, source, cfg, trainer, seed, out_dir, info, progress)

    def build(d_in, cfg, generator):
        raise TypeError(f"saelens_{kind} trains with SAELens's own loop; it has no module for ours")

    return Recipe(f"saelens_{kind}", f"SAELens's own {kind} trainer on the same data (reference)", build,
                  options=options, train=train)


SAELENS_BATCHTOPK = register(_reference("batchtopk", (AuxKOptions,)))
SAELENS_MATRYOSHKA = register(_reference("matryoshka", (AuxKOptions, MatryoshkaOptions)))
