#!/usr/bin/env bash
# `make run`: the Herald server, and beside it the example workers that serve the
# dashboard's demos (examples/diagnosis_worker.py on queue "demo", examples/llm_worker.py
# on queue "llm"). The server's output stays on this terminal; the workers log to
# .herald/*.log. Ctrl-C (or the server ending) stops all three.
#
#   scripts/run.sh [server.py options]     # HERALD_HOST / HERALD_PORT move it
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOST=${HERALD_HOST:-127.0.0.1}
PORT=${HERALD_PORT:-8080}
URL="http://$HOST:$PORT"
mkdir -p .herald

workers=()
stop_workers() {
  for pid in "${workers[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${workers[@]}"; do wait "$pid" 2>/dev/null; done
  workers=()
}
on_signal() {
  kill -TERM "$server" 2>/dev/null
}
trap on_signal INT TERM
trap stop_workers EXIT

"$PY" server.py "$@" &
server=$!

# Ready when /healthz answers (after the dev token is written to .herald/dev-token).
if ! "$PY" - "$URL" "$server" <<'PYEOF'
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1):
            sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(1)
PYEOF
then
  echo "run.sh: the server did not start on $URL" >&2
  wait "$server"
  exit $?
fi

if [ -z "${HERALD_TOKEN:-}" ] && [ ! -s .herald/dev-token ]; then
  echo "run.sh: no HERALD_TOKEN and no .herald/dev-token (a --jwt-secret server): workers not started" >&2
else
  "$PY" examples/diagnosis_worker.py --url "$URL" --queue demo --name diagnosis-1 --capacity 4 \
    >>.herald/diagnosis-worker.log 2>&1 &
  workers+=($!)
  "$PY" examples/llm_worker.py --url "$URL" --queue llm --name llm-1 --capacity 4 \
    >>.herald/llm-worker.log 2>&1 &
  workers+=($!)
  echo "Workers: diagnosis-1 on queue demo, llm-1 on queue llm (logs in .herald/*-worker.log)"
fi

# Wait for the server; a signal interrupts `wait`, so wait again until it has exited.
while kill -0 "$server" 2>/dev/null; do
  wait "$server"
  status=$?
done
exit "${status:-0}"
