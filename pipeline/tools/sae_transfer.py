"""Carry a trained SAE between machines through a channel of small files.

``pack`` writes one SAE directory as at most 8 files of at most 15 MiB: its weight matrices in
bfloat16 (vectors stay float32), split into parts, plus one tar of its small files (configs, train
log, split/repair tables; the large ``fc_history.parquet`` and checkpoints stay behind). ``unpack``
puts it back together under ``RUN_DIR/saes/<name>`` with float32 weights and a ``transfer.json`` that
says the matrices went through bfloat16.

    python -m pipeline.tools.sae_transfer pack --sae-dir runs/gpu16k/saes/topk_k32_s0 --out $OUT
    .venv/bin/python -m pipeline.tools.sae_transfer unpack --parts DIR --run-dir runs/experiment-gpu
"""
from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save

PART_BYTES = 15 * 2**20
SMALL_FILES = ("cfg.json", "sae_meta.json", "train_config.json", "train_log.jsonl", "splits.parquet",
               "repairs.parquet")


def pack(sae_dir: Path, out: Path) -> list[Path]:
    name = sae_dir.name
    tensors = load_file(str(sae_dir / "sae_weights.safetensors"))
    small = {k: (v.to(torch.bfloat16) if v.ndim >= 2 else v).contiguous() for k, v in tensors.items()}
    blob = save(small)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(0, len(blob), PART_BYTES):
        path = out / f"{name}.weights.{i // PART_BYTES:02d}"
        path.write_bytes(blob[i:i + PART_BYTES])
        written.append(path)
    with tarfile.open(out / f"{name}.files.tar", "w") as tar:
        for fname in SMALL_FILES:
            if (sae_dir / fname).exists():
                tar.add(sae_dir / fname, arcname=fname)
    written.append(out / f"{name}.files.tar")
    if len(written) > 8:
        raise SystemExit(f"error: {name} needs {len(written)} files, more than the 8 a transfer takes")
    print(f"packed {name}: {len(written)} files, {sum(p.stat().st_size for p in written) / 2**20:.1f} MiB")
    return written


def unpack(parts: Path, run_dir: Path) -> list[str]:
    names = sorted({p.name.split(".files.tar")[0] for p in parts.glob("*.files.tar")})
    if not names:
        raise SystemExit(f"error: no packed SAE in {parts}")
    for name in names:
        chunks = sorted(parts.glob(f"{name}.weights.*"))
        from safetensors.torch import load

        tensors = load(b"".join(p.read_bytes() for p in chunks))
        dest = run_dir / "saes" / name
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(parts / f"{name}.files.tar") as tar:
            tar.extractall(dest, filter="data")
        from safetensors.torch import save_file

        save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(dest / "sae_weights.safetensors"))
        (dest / "transfer.json").write_text(json.dumps({
            "note": "weight matrices carried in bfloat16 and restored to float32; vectors carried in float32",
            "matrices": sorted(k for k, v in tensors.items() if v.ndim >= 2)}, indent=2) + "\n")
        print(f"unpacked {name} into {dest}")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--sae-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    u = sub.add_parser("unpack")
    u.add_argument("--parts", type=Path, required=True)
    u.add_argument("--run-dir", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.sae_dir, args.out)
    else:
        unpack(args.parts, args.run_dir)


if __name__ == "__main__":
    main()
