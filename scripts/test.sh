#!/usr/bin/env bash
# README's test command: installs what the tests need (cached venv), lints, runs the suite.
# Each test file runs in its own pytest process: Composer keeps every Trainer alive until exit
# (it registers each Engine with atexit), and with it each run's streaming shared-memory files,
# so one long process runs out of file descriptors. Files run TEST_JOBS (default 2) at a time,
# one torch thread each, the slowest first; the unit-test files (no Trainer) share one process
# to pay the stack's import once. Each job's log is printed when it ends, then a table of
# seconds per job. Extra arguments go to every pytest call, e.g.
# `bash scripts/test.sh -k schedule`; TEST_FILES="tests/test_x.py ..." picks files.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$root/scripts/env.sh" | tail -n 1)"
cd "$root"
"$py" -m ruff check composer_let scripts tests bench
jobs="${TEST_JOBS:-2}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# The slowest files first (measured, scripts/test.sh's table), so the pool ends together.
slow=(tests/test_distributed.py tests/test_projection_init.py tests/test_bench_smoke.py tests/test_auto_stop.py
  tests/test_quickstart.py tests/test_icl.py tests/test_cross_tokenizer.py tests/test_teacher_runner.py)
unit=(tests/test_alignment.py tests/test_control.py tests/test_distill.py tests/test_layers.py tests/test_schedule.py)
if [ -n "${TEST_FILES:-}" ]; then
  read -r -a files <<<"$TEST_FILES"
else
  files=()
  for f in "${slow[@]}"; do [ -f "$f" ] && files+=("$f"); done
  for f in tests/test_*.py; do [[ " ${slow[*]} ${unit[*]} " == *" $f "* ]] || files+=("$f"); done
  files+=("${unit[*]}")  # one job
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
job_name() { basename "${1%% *}" .py; }
run_file() {  # "file [file ...]" -> $work/<name>.{log,code,secs}
  local name start code
  local -a group
  read -r -a group <<<"$1"
  name="$(job_name "$1")"
  shift
  start=$(date +%s)
  set +e
  "$py" -m pytest -q -ra -p no:cacheprovider --durations=3 --basetemp="$work/$name.tmp" "${group[@]}" "$@" >"$work/$name.log" 2>&1
  code=$?
  set -e
  echo "$code" >"$work/$name.code"
  echo $(($(date +%s) - start)) >"$work/$name.secs"
}
report_file() {
  local name="$1"
  echo "=== $name ($(cat "$work/$name.secs") s, exit $(cat "$work/$name.code"))"
  cat "$work/$name.log"
}
declare -A pids=()
for file in "${files[@]}"; do
  while [ "${#pids[@]}" -ge "$jobs" ]; do
    wait -n || true
    for name in "${!pids[@]}"; do
      if ! kill -0 "${pids[$name]}" 2>/dev/null; then report_file "$name"; unset "pids[$name]"; fi
    done
  done
  run_file "$file" "$@" &
  pids["$(job_name "$file")"]=$!
done
wait || true
for name in "${!pids[@]}"; do report_file "$name"; done

passed=0; failed=0; skipped=0; errors=0; bad_files=()
echo
echo "seconds per file:"
for file in "${files[@]}"; do
  name="$(job_name "$file")"
  code="$(cat "$work/$name.code")"
  printf '  %5s  %s\n' "$(cat "$work/$name.secs")" "$file"
  summary="$(grep -E '^=*\s*[0-9]+ (passed|failed|skipped|deselected|error)' "$work/$name.log" | tail -n 1 || true)"
  for kind in passed failed skipped errors error; do
    n="$(grep -oE "[0-9]+ $kind\b" <<<"$summary" | grep -oE '^[0-9]+' || true)"
    case "$kind" in
      passed) passed=$((passed + ${n:-0})) ;; failed) failed=$((failed + ${n:-0})) ;;
      skipped) skipped=$((skipped + ${n:-0})) ;; *) errors=$((errors + ${n:-0})) ;;
    esac
  done
  if [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then bad_files+=("$file"); fi
done
echo
[ "${#bad_files[@]}" -eq 0 ] || echo "files with failures: ${bad_files[*]}"
failed=$((failed + errors))
echo "$passed passed, $failed failed, $skipped skipped"
[ "${#bad_files[@]}" -eq 0 ] && [ "$passed" -gt 0 ]
