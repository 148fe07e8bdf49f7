#!/usr/bin/env bash
# The whole check, as CI runs it: set up, lint, render module docs, then the
# unit and integration tests against real servers the harness starts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
echo "== ansible-lint (production profile)"
ansible-lint --offline -q
echo "== ansible-doc renders every module"
for m in library/*.py; do
  name=$(basename "$m" .py)
  ansible-doc -M library "$name" >/dev/null || { echo "ansible-doc failed for $name" >&2; exit 1; }
done
echo "== pytest"
pytest -q "$@"
