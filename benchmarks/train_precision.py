"""Training speed of ``train.precision`` float32 against bf16, side by side in one run, through the
real training loop (tracker, maintenance, checkpoints and all) at the experiment preset's shape.

Each trainer trains the same steps on the same batches twice, once per setting, and the script
prints seconds per step, the float32 / bf16 ratio and the explained variance of the last logged
steps (a quality check: bf16 should not lose reconstruction). bf16 pays off only where the CPU has
bfloat16 matmul units (AMX-BF16, ``amx_bf16`` in /proc/cpuinfo); the script says whether it has.

    .venv/bin/python benchmarks/train_precision.py --run-dir runs/experiment           # its cache
    .venv/bin/python benchmarks/train_precision.py --trainers topk matryoshka --steps 300
    python3 benchmarks/train_precision.py --device cuda --steps 1000                   # a GPU machine
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch


from fc_base.sae_folder import read_train_log  # noqa: E402
from pipeline.config import PRESETS  # noqa: E402
from pipeline.train import open_activations  # noqa: E402
from trainers.training.data import InMemoryActivations  # noqa: E402
from trainers.training.export import ModelInfo  # noqa: E402
from trainers.training.loop import train_sae  # noqa: E402


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def tail_explained_variance(sae_dir: Path, lines: int = 10) -> float:
    return float(read_train_log(sae_dir)["explained_variance"].tail(lines).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, default=None,
                    help="a run whose activation cache to train on (default: Gaussian rows of the preset's width)")
    ap.add_argument("--preset", default="experiment", help="the preset whose training config to use")
    ap.add_argument("--trainers", nargs="+", default=["topk", "fc2sup_topk", "batchtopk", "matryoshka"])
    ap.add_argument("--steps", type=int, default=200, help="optimiser steps per trainer and setting")
    ap.add_argument("--device", default="cpu",
                    help="training device (on cuda both settings train under bf16 autocast; bf16 adds the faster routes)")
    args = ap.parse_args()

    cfg = PRESETS[args.preset]().train
    cfg.n_tokens = args.steps * cfg.batch_size
    cfg.checkpoint_every = 0
    cfg.device = args.device
    if args.run_dir is not None:
        source = open_activations(args.run_dir)
    else:
        gen = torch.Generator().manual_seed(0)
        source = InMemoryActivations(torch.randn(max(cfg.norm_rows, 65536), 640, generator=gen))
    flags = cpu_flags()
    print(f"CPU bfloat16 units: amx_bf16={'amx_bf16' in flags} avx512_bf16={'avx512_bf16' in flags}; "
          f"torch threads {cfg.cpu_threads or torch.get_num_threads()}; {args.steps} steps of {cfg.batch_size} rows, "
          f"width {cfg.d_sae}, k {cfg.k}")
    print(f"{'trainer':<16} {'float32 ms/step':>16} {'bf16 ms/step':>13} {'ratio':>6} {'EV float32':>11} {'EV bf16':>8}")
    scratch = Path(tempfile.mkdtemp(prefix="train_precision_"))
    try:
        for trainer in args.trainers:
            seconds, ev = {}, {}
            for precision in ("float32", "bf16"):
                cfg.precision = precision
                out = scratch / f"{trainer}_{precision}"
                start = time.perf_counter()
                train_sae(source, cfg, trainer, 0, out, ModelInfo("benchmark"), progress=False)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                seconds[precision] = time.perf_counter() - start
                ev[precision] = tail_explained_variance(out)
            ms = {p: 1000 * s / args.steps for p, s in seconds.items()}
            print(f"{trainer:<16} {ms['float32']:>16.1f} {ms['bf16']:>13.1f} {ms['float32'] / ms['bf16']:>6.2f} "
                  f"{ev['float32']:>11.4f} {ev['bf16']:>8.4f}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
