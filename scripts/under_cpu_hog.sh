#!/bin/bash
# Run one test file N times in a row under a busy loop per core (`yes > /dev/null`), logging each run's start,
# load average, exit code and duration: how the acceptance "passes N times in a row under a CPU hog" is checked.
#   scripts/under_cpu_hog.sh 10 tests/test_end_to_end.py        (from the repository root, its .venv active
#   or PYTHON=/path/to/python)
set -u
runs=$1 test=$2
shift 2
python=${PYTHON:-python}
hogs=()
for _ in $(seq "$(nproc)"); do yes > /dev/null & hogs+=($!); done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
passed=0
for i in $(seq "$runs"); do
  start=$(date +%s)
  echo "run $i start $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg) commit $(git rev-parse --short HEAD)"
  "$python" -m pytest "$test" -x -q "$@" > "/tmp/under-cpu-hog-$i.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] && passed=$((passed + 1))
  echo "run $i rc=$rc $(( $(date +%s) - start )) s load $(cut -d' ' -f1-3 /proc/loadavg) $(tail -1 "/tmp/under-cpu-hog-$i.log")"
done
echo "passed $passed/$runs"
[ "$passed" = "$runs" ]
