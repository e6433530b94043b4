#!/usr/bin/env bash
# README's test command: installs what the tests need (cached venv), lints, runs the suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k schedule`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$root/scripts/env.sh" | tail -n 1)"
cd "$root"
"$py" -m ruff check composer_let scripts tests bench
"$py" -m pytest -q -ra "$@"
