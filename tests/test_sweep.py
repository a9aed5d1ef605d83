"""L0 sweeps: which SAEs a config trains, the config each one trains with, and their folders."""
from __future__ import annotations

import json

import pytest

from fc_base.errors import ConfigError
from fc_base.sae_folder import SAEMeta, sae_name
from trainers.training.config import SweepPoint, TrainConfig, TrainJob


def _cfg(**kw) -> TrainConfig:
    base = dict(trainers=["topk", "relu_l1", "matryoshka"], seeds=[0, 1, 2], d_sae=64, k=8, n_tokens=4096,
                batch_size=256, reservoir_rows=256)
    base.update(kw)
    return TrainConfig(**base)


def test_without_a_sweep_every_trainer_gets_every_seed():
    cfg = _cfg(trainer_seeds={"matryoshka": [0]})
    assert cfg.jobs() == [TrainJob("topk", 0), TrainJob("topk", 1), TrainJob("topk", 2), TrainJob("relu_l1", 0),
                          TrainJob("relu_l1", 1), TrainJob("relu_l1", 2), TrainJob("matryoshka", 0)]
    assert cfg.at_point("") is cfg


def test_sweep_points_thin_trainers_and_seeds_and_set_k_and_options():
    cfg = _cfg(options={"relu_l1": {"l1_coeff": 1.0}},
               sweep=[{"label": "k8", "k": 8},
                      {"label": "k16", "k": 16, "trainers": ["topk", "relu_l1"], "seeds": [0, 1],
                       "options": {"relu_l1": {"l1_coeff": 0.5}}}])
    assert isinstance(cfg.sweep[0], SweepPoint)
    jobs = cfg.jobs()
    assert len(jobs) == 9 + 4 and jobs[0] == TrainJob("topk", 0, "k8") and jobs[-1] == TrainJob("relu_l1", 1, "k16")
    at16 = cfg.at_point("k16")
    assert at16.k == 16 and at16.sweep == [] and at16.options["relu_l1"]["l1_coeff"] == 0.5
    assert cfg.at_point("k8").options["relu_l1"]["l1_coeff"] == 1.0 and cfg.at_point("k8").k == 8
    assert cfg.options["relu_l1"]["l1_coeff"] == 1.0  # the base config is not modified
    assert sae_name("topk", 2, "k16") == "topk_k16_s2" and sae_name("topk", 2) == "topk_s2"
    again = TrainConfig(**json.loads(json.dumps(__import__("dataclasses").asdict(cfg))))
    assert again.jobs() == jobs  # survives the config.json round trip


@pytest.mark.parametrize("bad, message", [
    ({"sweep": [{"label": "a b", "k": 8}]}, "label"),
    ({"sweep": [{"label": "k8", "k": 8}, {"label": "k8", "k": 16}]}, "unique"),
    ({"sweep": [{"label": "k8", "k": 128}]}, "d_sae"),
    ({"sweep": [{"label": "k8", "trainers": ["nope"]}]}, "unknown trainer"),
    ({"sweep": [{"label": "k8", "options": {"relu_l1": {"nope": 1}}}]}, "nope"),
    ({"trainer_seeds": {"topk": [7]}}, "subset"),
    ({"trainer_seeds": {"batchtopk": [0]}}, "not in train.trainers"),
])
def test_bad_sweeps_fail_with_one_clear_error(bad, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**bad)


def test_train_stage_writes_one_folder_per_point_with_its_k(tmp_path):
    import torch

    from pipeline.config import get_preset
    from pipeline.train import planned_saes, train
    from trainers.training.data import InMemoryActivations

    cfg = get_preset("tiny")
    cfg.train = TrainConfig(**{**__import__("dataclasses").asdict(cfg.train), "trainers": ["topk"], "seeds": [0],
                               "n_tokens": 2048, "sweep": [{"label": "k4", "k": 4}, {"label": "k12", "k": 12}]})
    assert [j.point for j in planned_saes(cfg, point="k12")] == ["k12"]
    with pytest.raises(ConfigError, match="no sweep point"):
        planned_saes(cfg, point="k99")
    assert len(planned_saes(get_preset("experiment"))) == 54  # 6 arms x 3 L0s x 3 seeds
    thinned = get_preset("experiment-extra")
    with pytest.raises(ConfigError, match="trains no SAE"):
        planned_saes(thinned, trainer="batchtopk", point="k16")  # the thinned arms run only at k32
    assert len(planned_saes(thinned, trainer="batchtopk")) == 3 and len(planned_saes(thinned)) == 12 + 9
    relu = {p.label: thinned.train.at_point(p.label).options["relu_l1"] for p in thinned.train.sweep}
    assert {label: o["l0_target"] for label, o in relu.items()} == {"k16": 16, "k32": 32, "k64": 64}
    assert relu["k16"]["l1_coeff"] > relu["k32"]["l1_coeff"] > relu["k64"]["l1_coeff"]  # more L1, lower L0
    source = InMemoryActivations(torch.randn(4096, 64, generator=torch.Generator().manual_seed(0)))
    folders = train(cfg, tmp_path, source=source, progress=False)
    assert [f.name for f in folders] == ["topk_k4_s0", "topk_k12_s0"]
    metas = [SAEMeta.read(f) for f in folders]
    assert [m.k for m in metas] == [4, 12] and [m.final_l0 for m in metas] == [4.0, 12.0]


def test_a_penalty_sae_records_the_l0_its_weight_was_calibrated_for(tmp_path):
    import torch

    from pipeline.config import get_preset
    from pipeline.train import train
    from trainers.training.data import InMemoryActivations

    cfg = get_preset("tiny")
    cfg.train = TrainConfig(**{**__import__("dataclasses").asdict(cfg.train), "trainers": ["relu_l1"], "seeds": [0],
                               "n_tokens": 1024, "sweep": [
                                   {"label": "k4", "k": 4, "options": {"relu_l1": {"l1_coeff": 2.0, "l0_target": 4}}},
                                   {"label": "free", "options": {"relu_l1": {"l1_coeff": 2.0}}}]})
    source = InMemoryActivations(torch.randn(2048, 64, generator=torch.Generator().manual_seed(0)))
    metas = [SAEMeta.read(f) for f in train(cfg, tmp_path, source=source, progress=False)]
    assert [(m.k, m.l0_target) for m in metas] == [(None, 4), (None, None)]  # k stays a TopK-only field
    with pytest.raises(ConfigError, match="l0_target"):
        _cfg(options={"relu_l1": {"l0_target": 0}})
