#!/usr/bin/env bash
# `make loadtest`: locust, headless, bounded users and time, against a cloud.
#
# Without LOADTEST_HOST it starts its own `splitfc cloud serve` on loopback
# (free ports) and stops it afterwards (also on failure or Ctrl-C). Writes
# locust's CSV stats (and an HTML report) to $LOADTEST_OUT (results/loadtest), and prints (and
# writes to $LOADTEST_OUT/summary.json) throughput, p50/p99 and the tail batch sizes the cloud ran,
# read from its /metrics before and after (LOADTEST_METRICS_URL=http://host:port/metrics for a
# cloud given by LOADTEST_HOST; the one it starts itself is read without it).
#
#   LOADTEST_USERS=32 LOADTEST_TIME=60s LOADTEST_SPAWN_RATE=8 make loadtest
#   LOADTEST_HOST=127.0.0.1:50051 make loadtest          # an already running cloud or balancer
#   SPLITFC_LOADTEST_CODEC=hevc SPLITFC_LOADTEST_QP=37 make loadtest   # see deploy/locust/locustfile.py
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
USERS=${LOADTEST_USERS:-32}
SPAWN_RATE=${LOADTEST_SPAWN_RATE:-8}
RUN_TIME=${LOADTEST_TIME:-60s}
OUT=${LOADTEST_OUT:-results/loadtest}
SERVER_SPLITS=${LOADTEST_SERVER_SPLITS:-all}
mkdir -p "$OUT"

server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

host=${LOADTEST_HOST:-}
metrics_url=${LOADTEST_METRICS_URL:-}
if [ -z "$host" ]; then
  OMP_NUM_THREADS=1 "$BIN/splitfc" cloud serve --host 127.0.0.1 --grpc-port 0 --http-port 0 \
    --splits "$SERVER_SPLITS" >"$OUT/cloud.log" 2>&1 &
  server_pid=$!
  # The server prints "splitfc cloud: gRPC HOST:PORT  HTTP URL ..." once bound; /readyz says when loaded.
  "$BIN/python" - "$OUT/cloud.log" "$server_pid" >"$OUT/endpoints" <<'PY'
import os, re, sys, time, urllib.request
log, pid = sys.argv[1], int(sys.argv[2])
end = time.monotonic() + 600
grpc = http = None
while time.monotonic() < end:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("loadtest: the cloud server exited; see " + log)
    m = re.search(r"gRPC (\S+)\s+HTTP (\S+)", open(log).read())
    if m:
        grpc, http = m.groups()
        try:
            if urllib.request.urlopen(http + "/readyz", timeout=2).status == 200:
                print(grpc, http + "/metrics")
                sys.exit(0)
        except Exception:
            pass
    time.sleep(0.5)
sys.exit("loadtest: the cloud server did not become ready; see " + log)
PY
  read -r host metrics_url <"$OUT/endpoints"
  echo "loadtest: cloud ready at $host (log: $OUT/cloud.log)"
fi

echo "loadtest: $USERS users for $RUN_TIME against $host"
SPLITFC_LOADTEST_METRICS_URL=$metrics_url SPLITFC_LOADTEST_SUMMARY="$OUT/summary.json" \
  "$BIN/locust" -f deploy/locust/locustfile.py --headless --users "$USERS" --spawn-rate "$SPAWN_RATE" \
  --run-time "$RUN_TIME" --host "$host" --csv "$OUT/locust" --html "$OUT/locust.html" \
  --stop-timeout 60 --loglevel WARNING
echo "loadtest: CSV stats in $OUT/locust_stats.csv, summary in $OUT/summary.json"
