"""The SAE-Bench wrapper of trained SAE folders: the project's encoding rule, exactly."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from eval.random_sae import write_random_sae
from eval.sae import SAEFolderError, SAEMeta, list_sae_folders, load_sae


def _folder(tmp_path, arch, scale=2.5, name="x_s0"):
    return write_random_sae(tmp_path / "saes" / name, trainer="topk", seed=3, d_in=16, d_sae=48,
                            model_name="EleutherAI/pythia-14m", layer=1, architecture=arch, k=5,
                            input_scale=scale)


def _reference(folder, x_BD):
    """The encoding rule of the architecture contract, on the raw stored weights."""
    from safetensors.torch import load_file

    w = load_file(str(folder / "sae_weights.safetensors"))
    meta = json.loads((folder / "sae_meta.json").read_text())
    pre = (x_BD - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if meta["architecture"] == "topk":
        relu = torch.relu(pre)
        top = relu.topk(meta["k"], dim=-1)
        codes = torch.zeros_like(relu).scatter_(-1, top.indices, top.values)
    elif meta["architecture"] == "relu":
        codes = torch.relu(pre)
    else:
        codes = pre * (pre > w["threshold"])
    return codes, codes @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_wrapper_reconstructs_like_the_contract_and_has_unit_decoder_rows(tmp_path, arch):
    folder = _folder(tmp_path, arch)
    sae = load_sae(folder)
    x_BD = torch.randn(32, 16) * 3
    codes_ref, recon_ref = _reference(folder, x_BD)
    codes = sae.encode(x_BD)
    torch.testing.assert_close(sae(x_BD), recon_ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(codes > 0, codes_ref > 0)  # same latents fire
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(48), rtol=1e-5, atol=1e-5)
    assert sae.check_decoder_norms()
    if arch == "topk":
        assert int((codes > 0).sum(-1).max()) <= 5
    # sae-bench reads these
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.hook_layer) == (16, 48, 1)
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post" and sae.cfg.model_name == "EleutherAI/pythia-14m"


def test_encode_accepts_batch_and_sequence_shapes(tmp_path):
    sae = load_sae(_folder(tmp_path, "topk"))
    x_BLD = torch.randn(2, 7, 16)
    assert sae.encode(x_BLD).shape == (2, 7, 48)
    torch.testing.assert_close(sae(x_BLD).reshape(14, 16), sae(x_BLD.reshape(14, 16)))


def test_unfinished_and_broken_folders_raise_clear_errors(tmp_path):
    folder = _folder(tmp_path, "topk")
    assert list_sae_folders(tmp_path) == [folder]
    with pytest.raises(SAEFolderError, match="sae_meta.json is missing"):
        SAEMeta.read(tmp_path / "saes" / "nothing")
    bad = torch.randn(48, 16)
    bad[0, 0] = float("nan")
    from safetensors.torch import load_file

    weights = load_file(str(folder / "sae_weights.safetensors"))
    save_file({**weights, "W_dec": bad}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAEFolderError, match="W_dec contains NaN"):
        load_sae(folder)
    save_file({**weights, "W_enc": torch.zeros(3, 3)}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAEFolderError, match=r"W_enc has shape \(3, 3\)"):
        load_sae(folder)
    meta = json.loads((folder / "sae_meta.json").read_text())
    (folder / "sae_meta.json").write_text(json.dumps({**meta, "architecture": "gated"}))
    with pytest.raises(SAEFolderError, match="architecture must be one of"):
        load_sae(folder)


def test_jumprelu_without_threshold_is_refused(tmp_path):
    folder = _folder(tmp_path, "jumprelu")
    from safetensors.torch import load_file

    weights = load_file(str(folder / "sae_weights.safetensors"))
    del weights["threshold"]
    save_file(weights, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAEFolderError, match="needs a 'threshold'"):
        load_sae(folder)


def test_a_random_sae_folder_names_the_hook_it_reads(tmp_path):
    from fc_base.sae_folder import SAEMeta

    folder = write_random_sae(tmp_path / "saes" / "topk_s0", trainer="topk", seed=0, d_in=16, d_sae=48,
                              model_name="EleutherAI/pythia-14m", layer=1, hook="hook_mlp_out")
    assert SAEMeta.read(folder).hook_name == "blocks.1.hook_mlp_out"
