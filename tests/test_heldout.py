"""Held-out rows while training (``train.heldout_rows``) on a real tiny cache: training never reads
them, every log line scores them, the report's training curves draw them; at the default (0) training
and its files are as before; ``train.tensorboard`` writes events or says in one line why it cannot."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cache_tools.reader import ActivationStore
from fc_base.errors import ConfigError

HELDOUT = 1024
HELDOUT_KEYS = {"heldout_explained_variance", "heldout_mse", "heldout_l0", "heldout_dead_frac"}


class ReadRecordingStore(ActivationStore):
    """The real store, counting how often each activation row is read (every read of the store, the
    loader's and the normalisation's included, goes through ``read_into``)."""

    def __init__(self, path):
        super().__init__(path)
        self.reads_R = np.zeros(self.n_rows, dtype=np.int64)

    def read_into(self, shard, lo, hi, out, array="acts"):
        if array == "acts":
            base = shard * self.spec.shard_rows
            self.reads_R[base + lo:base + hi] += 1
        super().read_into(shard, lo, hi, out, array)


@pytest.fixture(scope="module")
def cache(tiny_model_dir, tmp_path_factory):
    from pipeline.config import resolve_config
    from pipeline.harvest import harvest

    cfg = resolve_config("tiny", None, ["harvest.n_tokens=4096"])
    run_dir = tmp_path_factory.mktemp("heldout") / "run"
    harvest(cfg, run_dir, progress=False)
    return cfg, run_dir


def _train(cfg, run_dir, sub, trainer="topk", **fields):
    from trainers.training.config import TrainConfig
    from trainers.training.export import ModelInfo
    from trainers.training.loop import train_sae

    store = ReadRecordingStore(run_dir / "cache")
    train_cfg = TrainConfig(**{**cfg.train.__dict__, **fields})
    out = run_dir / sub
    train_sae(store, train_cfg, trainer, 0, out, ModelInfo(cfg.model.name, layer=cfg.model.layer,
                                                            hook_name=cfg.model.hook), progress=False)
    return store, train_cfg, out


@pytest.fixture(scope="module")
def heldout_run(cache):
    cfg, run_dir = cache
    return _train(cfg, run_dir, "topk_heldout", heldout_rows=HELDOUT)


def test_training_never_reads_the_heldout_rows(heldout_run):
    store, cfg, _ = heldout_run
    n = store.n_rows
    epochs = cfg.n_tokens / (n - HELDOUT)
    assert epochs > 2  # the training rows are read by every epoch, so a leak would show as repeats
    # the held-out rows: read once, by the held-out read itself, never by a training batch
    assert (store.reads_R[n - HELDOUT:] == 1).all(), Counter(store.reads_R[n - HELDOUT:].tolist())
    assert store.reads_R[:n - HELDOUT].min() >= int(epochs)


def test_every_log_line_scores_the_heldout_rows(heldout_run):
    _, cfg, out = heldout_run
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(lines) == cfg.total_steps // cfg.log_every + 1
    assert all(HELDOUT_KEYS <= set(line) for line in lines)
    first, last = lines[0], lines[-1]
    assert last["heldout_mse"] < 0.5 * first["heldout_mse"]  # the SAE learns, on rows it never saw
    assert 0.5 < last["heldout_explained_variance"] <= 1.0
    assert last["heldout_l0"] == pytest.approx(cfg.k)  # TopK: k latents on every row
    assert 0.0 <= last["heldout_dead_frac"] < 1.0
    assert json.loads((out / "train_config.json").read_text())["heldout_rows"] == HELDOUT


def test_heldout_scores_are_what_the_exported_sae_gives_on_those_rows(heldout_run):
    """The last log line's held-out scores, recomputed from the exported folder by the eval's loader."""
    import torch

    from eval.sae import load_sae

    store, cfg, out = heldout_run
    last = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    meta = json.loads((out / "sae_meta.json").read_text())
    x_HD = torch.from_numpy(store.read_rows(store.n_rows - HELDOUT, store.n_rows)) * meta["norm_scale"]
    sae = load_sae(out)  # weights with the normalisation folded in: undo it on the input side
    recon_HD = sae.decode(sae.encode(x_HD / meta["norm_scale"])) * meta["norm_scale"]
    mse = float((recon_HD - x_HD).pow(2).sum(1).mean())
    assert last["heldout_mse"] == pytest.approx(mse, rel=1e-3)


def test_default_reads_every_row_and_writes_the_files_as_before(cache):
    from trainers.training.config import TrainConfig
    from trainers.training.loop import _comparable

    cfg, run_dir = cache
    store, train_cfg, out = _train(cfg, run_dir, "topk_default")
    assert train_cfg.heldout_rows == 0 and store.reads_R.min() >= 1  # nothing held out
    assert not HELDOUT_KEYS & set(json.loads((out / "train_log.jsonl").read_text().splitlines()[0]))
    # the fields added later are absent at their default, as in the files and checkpoints of SAEs
    # trained before they existed (so those resume and compare equal)
    record = json.loads((out / "train_config.json").read_text())
    assert "heldout_rows" not in record and "tensorboard" not in record
    assert "heldout_rows" not in _comparable(TrainConfig()) and "tensorboard" not in _comparable(TrainConfig())
    assert "heldout_rows" in _comparable(TrainConfig(heldout_rows=8))


def test_bad_heldout_settings_are_one_clear_error(cache):
    from trainers.training.config import TrainConfig

    cfg, run_dir = cache
    with pytest.raises(ConfigError, match="train.heldout_rows must be an int >= 0"):
        TrainConfig(heldout_rows=-1)
    with pytest.raises(ConfigError, match="fewer than train.batch_size"):
        _train(cfg, run_dir, "too_many", heldout_rows=4096 - 100)


def test_the_report_draws_the_heldout_curves(heldout_run, cache, tmp_path):
    from pipeline.analysis import plots
    from fc_base.sae_folder import read_train_log

    _, _, out = heldout_run
    _, run_dir = cache
    logs = [(d.name, read_train_log(d)) for d in (out, run_dir / "topk_default")]
    panels = plots.training_curve_lines(logs)
    assert ("topk_heldout", "heldout_mse", True) in panels["mse"]
    assert ("topk_heldout", "heldout_explained_variance", True) in panels["explained_variance"]
    assert ("topk_heldout", "heldout_l0", True) in panels["l0"]
    assert panels["dead fraction"] == [("topk_heldout", "heldout_dead_frac", True)]
    assert not any(name == "topk_default" and heldout for lines in panels.values() for name, _, heldout in lines)
    assert plots.training_curves([out, run_dir / "topk_default"], tmp_path / "curves.png").stat().st_size > 1000


def test_tensorboard_writes_events_or_says_why_not(cache):
    cfg, run_dir = cache
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="train.tensorboard needs the tensorboard package") as err:
            _train(cfg, run_dir, "tb", tensorboard=True)
        assert "\n" not in str(err.value)
        assert not (run_dir / "tb").exists()  # refused before anything is written
        return
    _, _, out = _train(cfg, run_dir, "tb", tensorboard=True)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
