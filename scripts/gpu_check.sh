#!/usr/bin/env bash
# GPU check for jattn: the whole pytest suite on the GPU (Pallas/CUDA cases compiled, not
# interpreted), then optionally the side-by-side benchmark. Runs from a copy of the repo
# with no install:  PYTHONPATH=. (set here), python3 with jax[cuda] + pytest.
#
#   scripts/gpu_check.sh [--bench] [--suite all|prefill|decode|append|bwd] [--quick]
#                        [--no-tests] [--budget SECONDS] [-- extra benchmarks.run args]
#
# --budget S: the whole script should end within about S seconds; the benchmark starts no
# new implementation after S - 60 s from the script's start (what is left is recorded as
# skipped), so one call of the device tool (10 minutes) always brings results back.
#
# Outputs go to $OUT when set (the device tool brings back at most 8 files), else to
# ./gpu-check-out: gpu_tests.log, junit.xml, and with --bench bench.log plus the
# benchmark's <date>-<gpu>.json/.md/.png. tokamax is benchmarked when its wheels are in
# .whl/ (see benchmarks/README.md); they are installed into a scratch folder that only
# the benchmark process sees. By default every tests/test_*.py runs in its own pytest
# process, all at once (TEST_FILE_TIMEOUT, default 400 s, bounds each; TEST_SPLIT spreads
# the largest over pytest-xdist workers); PYTEST_ARGS runs
# one pytest process with those arguments instead.
# Exit status: pytest's, else the benchmark's.
set -u -o pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"

bench=0; tests=1; suite=all; quick=(); budget=0; extra=()
t_start=$(date +%s)
while [ $# -gt 0 ]; do
  case "$1" in
    --bench) bench=1 ;;
    --no-tests) tests=0 ;;
    --suite) suite="$2"; bench=1; shift ;;
    --quick) quick=(--quick) ;;
    --budget) budget="$2"; shift ;;
    --) shift; extra=("$@"); bench=1; break ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# CUDA FP8 kernels prebuilt on the CPU machine (`JATTN_CACHE_DIR=.jattn-cache python -m
# jattn.ffi.build --arch sm_90a`) and carried along are used instead of building them here.
[ -d .jattn-cache ] && export JATTN_CACHE_DIR="${JATTN_CACHE_DIR:-$PWD/.jattn-cache}"
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1

{
  echo "# $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 || true
  "$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1
} | tee "$OUT_DIR/gpu_tests.log"

rc_tests=0
if [ "$tests" = 1 ]; then
  t0=$(date +%s)
  if [ -n "${PYTEST_ARGS:-}" ]; then
    # shellcheck disable=SC2086  (PYTEST_ARGS is word-split on purpose)
    "$PY" -m pytest $PYTEST_ARGS -q -rs -p no:cacheprovider --junitxml="$OUT_DIR/junit.xml" 2>&1 \
      | tee -a "$OUT_DIR/gpu_tests.log"
    rc_tests=${PIPESTATUS[0]}
  else
    # One pytest process per test file, all at once: compilation uses the host's cores,
    # and a CUDA fault (which poisons a process's context) fails only its own file.
    # Each process allocates GPU memory on demand; TEST_FILE_TIMEOUT bounds each file.
    # The largest files also spread over pytest-xdist workers where it is installed
    # (TEST_SPLIT: "file:workers ..."; a CUDA fault then fails one worker's share).
    tl=$(mktemp -d)
    pids=()
    xdist=0; "$PY" -c 'import xdist' 2>/dev/null && xdist=1
    for f in tests/test_*.py; do
      n=$(basename "$f" .py)
      split=()
      for sw in ${TEST_SPLIT:-test_ops:6 test_prefill_pallas:2 test_flax:3 test_fp8_gpu:3 test_block_sparse:3 test_mla:2 test_properties:2 test_bench:2}; do
        [ "$xdist" = 1 ] && [ "${sw%%:*}" = "$n" ] && split=(-n "${sw#*:}")
      done
      (
        s=$(date +%s)
        XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${TEST_FILE_TIMEOUT:-400}" \
          "$PY" -m pytest "$f" "${split[@]}" -q -rs --tb=short -p no:cacheprovider \
          -p no:benchmark --durations=5 --junitxml="$tl/$n.xml" >"$tl/$n.log" 2>&1
        rc=$?; echo "$(( $(date +%s) - s ))" >"$tl/$n.secs"; exit $rc
      ) &
      pids+=("$!:$n")
    done
    for pn in "${pids[@]}"; do
      wait "${pn%%:*}"; rc=$?
      echo "# ${pn#*:}: exit $rc in $(cat "$tl/${pn#*:}.secs" 2>/dev/null)s" >>"$tl/exits"
      # exit 5: nothing collected (a module skipped at import, e.g. no nbclient there)
      [ "$rc" != 0 ] && [ "$rc" != 5 ] && rc_tests=$rc
    done
    for f in "$tl"/*.log; do
      echo "#################### $(basename "$f" .log)"
      # XLA repeats one line per leaked module after a CUDA fault; keep the log readable
      grep -v 'cuda_executor.cc\|Source Location Trace\|cuda_status.cc' "$f"
    done >>"$OUT_DIR/gpu_tests.log"
    cat "$tl/exits" | tee -a "$OUT_DIR/gpu_tests.log"
    "$PY" - "$tl" "$OUT_DIR/junit.xml" <<'PY' | tee -a "$OUT_DIR/gpu_tests.log"
import glob, sys, xml.etree.ElementTree as ET
root = ET.Element("testsuites")
tot = dict(tests=0, failures=0, errors=0, skipped=0)
for path in sorted(glob.glob(sys.argv[1] + "/*.xml")):
  for suite in ET.parse(path).getroot().iter("testsuite"):
    root.append(suite)
    for k in tot:
      tot[k] += int(suite.get(k, 0))
ET.ElementTree(root).write(sys.argv[2])
print("# junit: " + ", ".join(f"{k} {v}" for k, v in tot.items()))
PY
  fi
  echo "# pytest exit $rc_tests in $(( $(date +%s) - t0 ))s" | tee -a "$OUT_DIR/gpu_tests.log"
fi

rc_bench=0
if [ "$bench" = 1 ]; then
  site=""
  if ls .whl/*.whl >/dev/null 2>&1; then
    site=/tmp/jattn-bench-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" .whl/*.whl 2>&1 | tail -3 | tee "$OUT_DIR/bench.log" || site=""
  else
    echo "# no .whl/: tokamax rows will say it is absent" | tee "$OUT_DIR/bench.log"
  fi
  deadline=()
  if [ "$budget" -gt 0 ]; then
    left=$(( budget - 60 - ($(date +%s) - t_start) ))
    deadline=(--deadline "$(( left > 30 ? left : 30 ))")
  fi
  PYTHONPATH="$PYTHONPATH${site:+:$site}" "$PY" -m benchmarks.run --suite "$suite" \
    --out "$OUT_DIR" "${quick[@]}" "${deadline[@]}" "${extra[@]}" 2>&1 | tee -a "$OUT_DIR/bench.log"
  rc_bench=${PIPESTATUS[0]}
fi

[ "$rc_tests" != 0 ] && exit "$rc_tests"
exit "$rc_bench"
