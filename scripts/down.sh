#!/usr/bin/env bash
# make down: stop the fc-sae runner and the local Prefect server started by make run.
set -uo pipefail
cd "$(dirname "$0")/.."
STATE=.prefect
for name in runner server; do
  pidfile="$STATE/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- -"$pid" 2>/dev/null || true
    echo "down: stopped the $name (pid $pid)"
  fi
  rm -f "$pidfile"
done
# Anything still holding the API port was started by us (e.g. a server whose pidfile was lost).
left=$(pgrep -f "prefect server start --host 127.0.0.1 --port 4200|-m flows.serve" || true)
if [ -n "$left" ]; then kill -KILL $left 2>/dev/null || true; echo "down: killed leftover processes $left"; fi
exit 0
