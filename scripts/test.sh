#!/usr/bin/env bash
# README's test command: installs what the tests need (cached venv), lints, runs the suite.
# Each test file runs in its own pytest process: Composer keeps every Trainer alive until exit
# (it registers each Engine with atexit), and with it each run's streaming shared-memory files,
# so one long process runs out of file descriptors. Extra arguments go to every pytest call,
# e.g. `bash scripts/test.sh -k schedule`; TEST_FILES="tests/test_x.py ..." picks files.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$root/scripts/env.sh" | tail -n 1)"
cd "$root"
"$py" -m ruff check composer_let scripts tests bench
passed=0; failed=0; skipped=0; errors=0; bad_files=()
for file in ${TEST_FILES:-tests/test_*.py}; do
  log="$(mktemp)"
  set +e
  "$py" -m pytest -q -ra -p no:cacheprovider "$file" "$@" 2>&1 | tee "$log"
  code=${PIPESTATUS[0]}
  set -e
  summary="$(grep -E '^=*\s*[0-9]+ (passed|failed|skipped|deselected|error)' "$log" | tail -n 1 || true)"
  for kind in passed failed skipped errors error; do
    n="$(grep -oE "[0-9]+ $kind\b" <<<"$summary" | grep -oE '^[0-9]+' || true)"
    case "$kind" in
      passed) passed=$((passed + ${n:-0})) ;; failed) failed=$((failed + ${n:-0})) ;;
      skipped) skipped=$((skipped + ${n:-0})) ;; *) errors=$((errors + ${n:-0})) ;;
    esac
  done
  rm -f "$log"
  if [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then bad_files+=("$file"); fi
done
echo
[ "${#bad_files[@]}" -eq 0 ] || echo "files with failures: ${bad_files[*]}"
failed=$((failed + errors))
echo "$passed passed, $failed failed, $skipped skipped"
[ "${#bad_files[@]}" -eq 0 ] && [ "$passed" -gt 0 ]
