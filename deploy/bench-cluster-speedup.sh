#!/bin/bash
# splitfc bench on a local Dask cluster: 1 worker, then 2 workers, on the same points (a fresh
# results folder each, so both compute everything). Each timed run follows a warm-up run on other
# points so that model loading and first ffmpeg hashing in the workers are not in the timing.
# Usage: [CODEC=vvenc] deploy/bench-cluster-speedup.sh   (from the repository root; port 8799 on 127.0.0.1)
set -euo pipefail
V=$(pwd)/.venv/bin
D=$(mktemp -d)
cd "$D"
"$V/dask" scheduler --host 127.0.0.1 --port 8799 --no-dashboard >scheduler.log 2>&1 & S=$!
W=("$V/dask" worker tcp://127.0.0.1:8799 --host 127.0.0.1 --nthreads 1 --no-nanny --no-dashboard)
COMMON=(--splits dinov2-cls --codecs "${CODEC:-vvenc}" --samples 4 --no-plots --quiet --executor dask --scheduler tcp://127.0.0.1:8799)
timed() {  # $1 = results folder; prints the seconds of one run of the 24 points
  local t0 t1; t0=$(date +%s.%N)
  "$V/splitfc" bench "${COMMON[@]}" --qps 22,27,32,37,42 -o "$1" | head -1 >&2
  t1=$(date +%s.%N); python3 -c "print($t1 - $t0)"
}
sleep 3
OMP_NUM_THREADS=1 "${W[@]}" >w1.log 2>&1 & W1=$!
sleep 5
"$V/splitfc" bench "${COMMON[@]}" --qps 30 -o warm1 >/dev/null
uptime >&2; one=$(timed one)
OMP_NUM_THREADS=1 "${W[@]}" >w2.log 2>&1 & W2=$!
sleep 5
"$V/splitfc" bench "${COMMON[@]}" --qps 31,33 -o warm2 >/dev/null
uptime >&2; two=$(timed two)
python3 -c "print(f'1 worker {$one:.1f} s, 2 workers {$two:.1f} s, speed-up {$one / $two:.2f}x')"
kill $W1 $W2 $S
