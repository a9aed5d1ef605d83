"""Calibrate relu_l1's L1 weight so that its SAEs land near given L0s on a run's activation cache.

    .venv/bin/python -m pipeline.tools.relu_l1_calibration --run-dir runs/experiment --preset experiment \
        --coeffs 0.5 1 2 4 --targets 16 32 64

Trains one relu_l1 SAE per weight with the preset's training settings (seed 0, the whole token budget:
L0 keeps falling while the L1 term acts, so a short run would mislead) into ``--out`` (the run's cache
is linked there, nothing of the run is written), then prints weight -> L0 and explained variance at the
end of training, and for each target the weight interpolated linearly in log L0 against log weight
between the two nearest measured points. Finished SAEs are kept: a re-run with more weights trains
only the new ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from fc_base.sae_folder import SAEMeta, read_train_log
from pipeline.config import get_preset
from pipeline.train import train
from trainers.training.config import SweepPoint


def point_label(coeff: float) -> str:
    return "c" + f"{coeff:g}".replace(".", "-")


def interpolate(measured: list[tuple[float, float]], target: float) -> float:
    """Weight whose L0 is ``target`` on the log-log line through the two measured (weight, L0)
    points nearest to it in log L0 (L0 falls as the weight grows)."""
    pts = sorted(measured, key=lambda p: abs(math.log(p[1]) - math.log(target)))[:2]
    (c1, l1), (c2, l2) = pts
    if l1 == l2:
        return c1
    slope = (math.log(c2) - math.log(c1)) / (math.log(l2) - math.log(l1))
    return math.exp(math.log(c1) + slope * (math.log(target) - math.log(l1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, type=Path, help="run directory whose cache/ is harvested")
    ap.add_argument("--preset", default="experiment", help="preset whose training settings are used")
    ap.add_argument("--coeffs", type=float, nargs="+", required=True, help="L1 weights to train")
    ap.add_argument("--targets", type=float, nargs="+", default=[16, 32, 64], help="L0s to interpolate for")
    ap.add_argument("--out", type=Path, default=Path("runs/relu-l1-calibration"))
    args = ap.parse_args()

    cache = (args.run_dir / "cache").resolve()
    if not cache.is_dir():
        sys.exit(f"error: no activation cache at {cache}: harvest the run first")
    args.out.mkdir(parents=True, exist_ok=True)
    link = args.out / "cache"
    if not link.exists():
        link.symlink_to(cache)
    cfg = get_preset(args.preset)
    points = [SweepPoint(label=point_label(c), options={"relu_l1": {"l1_coeff": c}}) for c in args.coeffs]
    cfg.train = dataclasses.replace(cfg.train, trainers=["relu_l1"], seeds=[0], sweep=points, trainer_seeds={})
    folders = train(cfg, args.out)

    measured = []
    print(f"{'l1_coeff':>9} {'L0':>8} {'expl. var.':>10}  (end of training, {cfg.train.n_tokens:,} tokens)")
    for coeff, folder in zip(args.coeffs, folders):
        meta = SAEMeta.read(folder)
        log = read_train_log(folder)
        ev = float(log["explained_variance"].tail(20).mean())
        print(f"{coeff:>9g} {meta.final_l0:>8.1f} {ev:>10.3f}")
        if meta.final_l0 > 0:  # a weight that silences every latent has no place on a log scale
            measured.append((coeff, meta.final_l0))
    if len(measured) >= 2:
        picks = {f"{t:g}": round(interpolate(measured, t), 3) for t in args.targets}
        print("interpolated l1_coeff per target L0:", json.dumps(picks))


if __name__ == "__main__":
    main()
