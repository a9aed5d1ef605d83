"""``fc-sae dashboard`` on a real ``synth-tiny`` run (harvested synthetic cache, trained TopK SAE): each
latent's section names the true features its decoder row matches, with their cosines and their parent
and children in the hierarchy, as computed here from the synthetic model itself."""
from __future__ import annotations

import html as html_lib
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from pipeline.dashboard.build import build_dashboard
from pipeline.dashboard.options import DashboardOptions

SAE = "topk_s0"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from pipeline.config import resolve_config
    from pipeline.harvest import harvest
    from pipeline.rundir import prepare_run_dir
    from pipeline.train import train

    run_dir = tmp_path_factory.mktemp("dashboard_synth") / "run"
    cfg = prepare_run_dir(run_dir, resolve_config("synth-tiny", None, []))
    harvest(cfg, run_dir, progress=False)
    train(cfg, run_dir, trainer="topk", seed=0, progress=False)
    return cfg, run_dir


@pytest.fixture(scope="module")
def truth(run):
    from eval.sae import load_sae
    from eval.synthetic.metrics import hierarchy_truth
    from pipeline.synthetic_models import load_synthetic_model

    cfg, run_dir = run
    t = hierarchy_truth(load_synthetic_model(cfg.model.name))
    V_FD = t.V_FD / t.V_FD.norm(dim=1, keepdim=True)
    dec_SD = load_sae(run_dir / "saes" / SAE).W_dec.detach()
    return t, (dec_SD / dec_SD.norm(dim=1, keepdim=True)) @ V_FD.T


def _features_table(page: str, latent: int) -> list[list[str]]:
    section = page[page.index(f'id="latent-{latent}"'):]
    section = section[:section.index("</section>")]
    table = section[section.index("ground-truth features"):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    return [[html_lib.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in rows]


def test_each_latent_shows_the_true_features_it_matches_with_their_relations(run, truth, tmp_path):
    _, run_dir = run
    t, cos_SF = truth
    # latents whose closest feature has a parent: the relations are then on the page
    with_parent = [i for i in range(cos_SF.shape[0]) if int(t.parent_F[int(cos_SF[i].argmax())]) >= 0][:3]
    assert with_parent, "the synthetic hierarchy gives no latent a feature with a parent"
    page = build_dashboard(run_dir, DashboardOptions(sae=SAE, latents=tuple(with_parent), out=tmp_path / "d",
                                                     n_contexts=3)).read_text()
    best_latent_F = cos_SF.argmax(0)
    for i in with_parent:
        rows = _features_table(page, i)
        cos_k, feat_k = cos_SF[i].topk(3)
        assert [int(r[0]) for r in rows] == feat_k.tolist()
        assert [float(r[1]) for r in rows] == pytest.approx(cos_k.tolist(), abs=5e-4)
        top = rows[0]
        f = int(feat_k[0])
        p = int(t.parent_F[f])
        assert int(top[2]) == int(t.depth_F[f]) >= 1
        assert top[3].startswith(f"feature {p} (its closest latent {int(best_latent_F[p])}, cos ")
        children = torch.nonzero(t.parent_F == f).flatten().tolist()
        for ch in children[:8]:
            assert f"feature {ch} (its closest latent {int(best_latent_F[ch])}" in top[4]
        if not children:
            assert top[4] == "none"
    # a synthetic row has no tokens: its context is the sample alone, named by group and index
    assert re.search(r"sample \d+ of group \d+", page) and page.count('class="fire"') == 3 * len(with_parent)


def test_an_sae_of_another_synthetic_config_is_one_error_line(run, tmp_path):
    _, run_dir = run
    other = tmp_path / "other"
    shutil.copytree(run_dir / "saes" / SAE, other / "saes" / SAE)
    (other / "cache").symlink_to(run_dir / "cache")
    shutil.copy(run_dir / "config.json", other / "config.json")
    cfg_json = json.loads((other / "saes" / SAE / "cfg.json").read_text())
    cfg_json["metadata"]["synthetic_config_hash"] = "0123456789abcdef"
    (other / "saes" / SAE / "cfg.json").write_text(json.dumps(cfg_json))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "dashboard", "--run-dir", str(other), "--sae", SAE,
                           "--latents", "1"], capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("fc-sae: error: ") and "with config 0123456789abcdef" in lines[-1], proc.stderr
    assert not (other / "dashboards").exists()
