"""pipeline/tools/sae_transfer.py: an SAE folder survives the trip through small files."""
from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file


def test_pack_then_unpack_restores_the_folder_with_bf16_matrices(tmp_path, monkeypatch):
    from pipeline.tools import sae_transfer as transfer

    monkeypatch.setattr(transfer, "PART_BYTES", 1024)  # force several parts
    sae = tmp_path / "run" / "saes" / "topk_k32_s0"
    sae.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    weights = {"W_enc": torch.randn(16, 48, generator=gen), "W_dec": torch.randn(48, 16, generator=gen),
               "b_enc": torch.randn(48, generator=gen), "b_dec": torch.randn(16, generator=gen)}
    save_file(weights, str(sae / "sae_weights.safetensors"))
    (sae / "cfg.json").write_text('{"d_sae": 48}\n')
    (sae / "train_log.jsonl").write_text('{"step": 1}\n')
    (sae / "fc_history.parquet").write_bytes(b"large, stays behind")

    parts = transfer.pack(sae, tmp_path / "parts")
    assert 2 < len(parts) <= 8 and all(p.stat().st_size <= 1024 or p.suffix == ".tar" for p in parts)
    assert transfer.unpack(tmp_path / "parts", tmp_path / "back") == ["topk_k32_s0"]
    back = tmp_path / "back" / "saes" / "topk_k32_s0"
    got = load_file(str(back / "sae_weights.safetensors"))
    for name, value in weights.items():
        want = value.to(torch.bfloat16).float() if value.ndim == 2 else value
        assert got[name].dtype == torch.float32 and torch.equal(got[name], want), name
    assert (back / "cfg.json").read_text() == '{"d_sae": 48}\n' and (back / "train_log.jsonl").is_file()
    assert not (back / "fc_history.parquet").exists() and (back / "transfer.json").is_file()
