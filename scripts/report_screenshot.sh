#!/usr/bin/env bash
# Render the reports of the committed results tables and take full-page screenshots of them:
#   docs/report_experiment.png          from results/experiment/results.parquet
#   docs/report_experiment_f32_k32.png  from results/experiment-f32-k32/results.parquet
# The pages are written to a scratch folder (REPORT_OUT, default a temp dir), never under results/.
# Needs Debian's chromium (apt-get install -y chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
HEIGHT=${HEIGHT:-4000}
BROWSER=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$BROWSER" ]]; then
    echo "report_screenshot.sh: chromium is not installed (apt-get install -y chromium)" >&2
    exit 1
fi
OUT=${REPORT_OUT:-$(mktemp -d -t fc-sae-report-XXXXXX)}

shoot() {  # shoot RUN PNG: render results/RUN/results.parquet, screenshot it into PNG
    local run=$1 png=$2 page="$OUT/$1/index.html"
    nice "$PY" -m pipeline.analysis.report "results/$run/results.parquet" --out "$OUT/$run"
    # --no-sandbox: root in a container has no user namespace for chromium's sandbox
    nice "$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --window-size="1280,$HEIGHT" --screenshot="$png" "file://$(realpath "$page")" 2>/dev/null
    echo "screenshot: $png (page: $page)"
}

shoot experiment docs/report_experiment.png
shoot experiment-f32-k32 docs/report_experiment_f32_k32.png
