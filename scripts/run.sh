#!/usr/bin/env bash
# make run / make eval: start (if needed) a local Prefect server and the fc-sae runner in the
# background, trigger `prefect deployment run fc-sae/<MODE>`, draw one progress line per stage
# until the flow run ends (python -m pipeline.progress), then print the closing summary.
# Usage: [VERBOSE=1] scripts/run.sh full|eval PRESET RUN_DIR [CONFIG_FILE]
# CONFIG_FILE (JSON/YAML, may name a preset and override fields) replaces PRESET for a full run.
# Prefect's event stream goes to .prefect/flow-run.log; VERBOSE=1 (or FC_SAE_VERBOSE=1) shows it here
# instead of the progress lines.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-full}; PRESET=${2:-demo}; RUN_DIR=${3:-runs/$PRESET}; CONFIG_FILE=${4:-}
VERBOSE=${VERBOSE:-${FC_SAE_VERBOSE:-}}
[ "$VERBOSE" = 0 ] && VERBOSE=
BIN=.venv/bin
STATE=.prefect
LOG=$STATE/flow-run.log
TARGET=$([ "$MODE" = eval ] && echo eval || echo run)
case "$MODE" in full|eval) ;; *) echo "run: mode must be full or eval, got '$MODE'" >&2; exit 2 ;; esac
abspath() { python3 -c 'import os,sys;print(os.path.abspath(sys.argv[1]))' "$1"; }
RUN_DIR=$(abspath "$RUN_DIR")
if [ "$MODE" = eval ] && [ ! -f "$RUN_DIR/config.json" ]; then
  echo "run: $RUN_DIR has no config.json: run the full pipeline first (make run RUN_DIR=...)" >&2; exit 2
fi
CONFIG_PARAM=()
if [ -n "$CONFIG_FILE" ]; then
  [ -f "$CONFIG_FILE" ] || { echo "run: config file $CONFIG_FILE does not exist" >&2; exit 2; }
  CONFIG_PARAM=(--param "config_file=$(abspath "$CONFIG_FILE")")
fi
if [ -n "$VERBOSE" ]; then
  echo "run: Prefect's event stream is shown here and kept in $LOG; the runner's output is in $STATE/runner.log"
else
  echo "run: Prefect's event stream goes to $LOG, the runner's output to $STATE/runner.log (make $TARGET VERBOSE=1 shows the stream here)"
fi
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p "$STATE"
API=http://127.0.0.1:4200/api

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! curl -sf "$API/health" >/dev/null 2>&1; then
  echo "run: starting the Prefect server on 127.0.0.1:4200 (log: $STATE/server.log)"
  setsid nohup "$BIN/prefect" server start --host 127.0.0.1 --port 4200 >"$STATE/server.log" 2>&1 &
  echo $! >"$STATE/server.pid"
  for _ in $(seq 1 120); do curl -sf "$API/health" >/dev/null 2>&1 && break; sleep 1; done
  curl -sf "$API/health" >/dev/null || { echo "run: the Prefect server did not start; see $STATE/server.log" >&2; exit 1; }
fi

# The runner must be restarted when the code changed: Prefect fixes parameters at serve time, and the
# runner keeps the stage modules it imported (the progress records come from them).
code_stamp=$(cat flows/*.py pipeline/*.py trainers/*.py trainers/*/*.py eval/*.py cache_tools/*.py fc_base/*.py | sha256sum | cut -c1-16)
if alive "$STATE/runner.pid" && [ "$(cat "$STATE/runner.stamp" 2>/dev/null)" != "$code_stamp" ]; then
  echo "run: restarting the fc-sae runner (the code changed)"
  pid=$(cat "$STATE/runner.pid")
  kill -- -"$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  # Its graceful shutdown takes seconds; a runner still alive here would not be replaced.
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- -"$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
fi
if ! alive "$STATE/runner.pid"; then
  echo "run: starting the fc-sae runner (log: $STATE/runner.log)"
  setsid nohup "$BIN/python" -m flows.serve >"$STATE/runner.log" 2>&1 &
  echo $! >"$STATE/runner.pid"
  echo "$code_stamp" >"$STATE/runner.stamp"
  for _ in $(seq 1 120); do
    "$BIN/prefect" deployment inspect fc-sae/full >/dev/null 2>&1 && "$BIN/prefect" deployment inspect fc-sae/eval >/dev/null 2>&1 && break
    alive "$STATE/runner.pid" || { echo "run: the runner exited; see $STATE/runner.log" >&2; tail -5 "$STATE/runner.log" >&2; exit 1; }
    sleep 1
  done
fi

if [ "$MODE" = eval ]; then what="the config in $RUN_DIR/config.json"; else what="preset $PRESET${CONFIG_FILE:+, config $CONFIG_FILE}"; fi
echo "run: prefect deployment run fc-sae/$MODE ($what, run dir $RUN_DIR)"
start=$(date +%s)
runner_log_at=$(wc -c <"$STATE/runner.log" 2>/dev/null || echo 0)  # this flow run's part of the runner's log starts here
RUN=("$BIN/prefect" deployment run "fc-sae/$MODE" --param "preset=$PRESET" --param "run_dir=$RUN_DIR"
     ${CONFIG_PARAM[@]+"${CONFIG_PARAM[@]}"} --watch)
: >"$LOG"
set +e
if [ -n "$VERBOSE" ]; then
  "${RUN[@]}" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
else
  "$BIN/python" -m pipeline.progress watch "$RUN_DIR" --log "$LOG" --since "$start" -- "${RUN[@]}"
  rc=$?
fi
set -e
if [ "$rc" -ne 0 ]; then
  echo "run: the flow run failed after $(( $(date +%s) - start )) s (exit $rc); the stream: $LOG, the traceback: $STATE/runner.log" >&2
  error=$(tail -c +"$((runner_log_at + 1))" "$STATE/runner.log" 2>/dev/null | grep -E "^[A-Za-z_.]+(Error|Exception|Interrupt)\b" | tail -n 1 || true)
  [ -n "$error" ] && echo "run: $error" >&2
  exit "$rc"
fi
echo "run: finished in $(( $(date +%s) - start )) s"
"$BIN/python" -m pipeline.progress summary "$RUN_DIR" --since "$start"
echo "Prefect UI:    http://127.0.0.1:4200   (stop everything with: make down)"
