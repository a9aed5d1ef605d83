"""``fc-cache``: inspect, verify and repair an activation store.

    fc-cache inspect STORE   shape, dtype, provenance, shards, size, per-dimension statistics
    fc-cache verify STORE    check every shard's index, CRC and manifest checksum (exit 1 if damaged)
    fc-cache repair STORE    drop damaged shards from the manifest so the harvest re-creates them
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fc_base.cli import run_command


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def dimension_stats(store, sample_rows: int) -> dict:
    """Per-dimension mean/std/min/max and row-norm quantiles over a sample spread over all shards.
    Rows inside a shard are already shuffled, so each shard's leading rows are a random sample."""
    shards = store.shards
    per_shard = max(1, sample_rows // max(1, len(shards)))
    parts = [store.read_rows(s * store.spec.shard_rows, s * store.spec.shard_rows + min(per_shard, store.shard_rows(s)))
             for s in shards]
    x_ND = np.concatenate(parts) if parts else np.zeros((0, store.d_model), np.float32)
    norms_N = np.linalg.norm(x_ND, axis=1)
    return {
        "sample_rows": int(x_ND.shape[0]),
        "mean": x_ND.mean(0).tolist(), "std": x_ND.std(0).tolist(),
        "min": x_ND.min(0).tolist(), "max": x_ND.max(0).tolist(),
        "row_norm_quantiles": dict(zip(["min", "p1", "p50", "p99", "max"],
                                       np.quantile(norms_N, [0, .01, .5, .99, 1]).tolist())),
        "nonfinite": int((~np.isfinite(x_ND)).sum()),
    }


def cmd_inspect(args) -> int:
    from cache_tools.reader import open_store

    store = open_store(args.store, require_complete=False)
    spec = store.spec
    info = {
        "path": str(store.path), "shape": [spec.n_rows, spec.d_model], "dtype": spec.acts_dtype,
        "shards_committed": len(store.shards), "shards_total": spec.n_shards, "complete": store.complete,
        "shard_rows": spec.shard_rows, "chunk_rows": spec.chunk_rows,
        "size_bytes": sum(f.nbytes for r in store.records.values() for f in r.files.values()),
        "attributes": {k: v for k, v in store.attrs.items() if k != "fc_sae_store"},
    }
    if store.shards:
        info["stats"] = dimension_stats(store, args.sample_rows)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    attrs = info["attributes"]
    print(f"store      {info['path']}")
    print(f"shape      {spec.n_rows} x {spec.d_model} {spec.acts_dtype}  "
          f"({_fmt_bytes(info['size_bytes'])} on disk)")
    print(f"shards     {len(store.shards)}/{spec.n_shards} committed"
          f"{'' if store.complete else '  (INCOMPLETE: run the harvest to finish)'}; "
          f"{spec.shard_rows} rows per shard, {spec.chunk_rows}-row chunks")
    model = attrs.get("model", {})
    if model:
        prov = model.get("provenance", {})
        print(f"model      {model.get('name')} (source {model.get('source')}, forward {model.get('dtype')}); "
              f"{attrs.get('hook_name')}")
        if prov:
            print(f"provenance {json.dumps(prov)}")
    if "dataset" in attrs:
        print(f"dataset    {json.dumps(attrs['dataset'])}; context {attrs.get('context_length')}, "
              f"seed {attrs.get('seed')}, BOS excluded: {attrs.get('bos_excluded')}")
    if "project_version" in attrs:
        print(f"written by fc-sae {attrs['project_version']} at {attrs.get('created_at')}")
    if "stats" in info:
        st = info["stats"]
        mean, std = np.array(st["mean"]), np.array(st["std"])
        lo, hi = np.array(st["min"]), np.array(st["max"])
        q = st["row_norm_quantiles"]
        print(f"sample     {st['sample_rows']} rows; non-finite values: {st['nonfinite']}")
        print("row norm   " + "  ".join(f"{k} {v:.4g}" for k, v in q.items()))
        print(f"per-dim    mean in [{mean.min():.4g}, {mean.max():.4g}], std in [{std.min():.4g}, {std.max():.4g}]")
        top = np.argsort(-np.maximum(np.abs(lo), np.abs(hi)))[:args.top]
        print("largest |x| dims:")
        for d in top:
            print(f"  dim {d:5d}  mean {mean[d]: .4g}  std {std[d]: .4g}  min {lo[d]: .4g}  max {hi[d]: .4g}")
    return 0


def cmd_verify(args) -> int:
    from cache_tools.verify import verify_store

    report = verify_store(args.store, checksum=not args.quick)
    for line in report.bad_manifest_lines:
        print(f"DAMAGED manifest line {line}", file=sys.stderr)
    for p in report.problems:
        print(f"DAMAGED shard {p.shard} ({p.array}): {p.reason}", file=sys.stderr)
    if report.leftovers:
        print(f"note: {len(report.leftovers)} leftover file(s) of an interrupted write "
              f"(removed by the next harvest)")
    if not report.ok:
        print(f"{len(report.damaged_shards)} damaged shard(s): {report.damaged_shards}; "
              f"run 'fc-cache repair {args.store}' then the harvest again", file=sys.stderr)
        return 1
    if report.missing:
        print(f"store incomplete: {len(report.committed)} of {report.n_shards} shards committed; "
              f"run the harvest to finish it", file=sys.stderr)
        return 1
    print(f"ok: {report.n_shards} shards verified")
    return 0


def cmd_repair(args) -> int:
    from cache_tools.verify import repair_store

    report = repair_store(args.store)
    if not report.dropped:
        print("nothing to repair")
        return 0
    print(f"dropped shard(s) {report.dropped} from the manifest and deleted {len(report.removed_files)} "
          f"file(s); run the harvest again to re-create them")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fc-cache", description="Inspect, verify and repair an activation store.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="shape, dtype, provenance, shards, size, per-dimension stats")
    p.add_argument("store", type=Path)
    p.add_argument("--sample-rows", type=int, default=65536, help="rows sampled for the statistics")
    p.add_argument("--top", type=int, default=8, help="dimensions listed by largest magnitude")
    p.add_argument("--json", action="store_true", help="print everything as JSON (full per-dim arrays)")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("verify", help="check every shard (exit 1 naming each damaged shard)")
    p.add_argument("store", type=Path)
    p.add_argument("--quick", action="store_true", help="skip the whole-file checksums (sizes and indices only)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("repair", help="drop damaged shards from the manifest so the harvest re-creates them")
    p.add_argument("store", type=Path)
    p.set_defaults(func=cmd_repair)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("fc-cache", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
