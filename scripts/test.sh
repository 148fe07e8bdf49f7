#!/usr/bin/env bash
# The whole check, as CI runs it: set up, lint, then pytest: the unit tests first (ansible-doc
# renders every module: tests/unit/test_module_docs.py), then the integration tests against real
# servers the harness starts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
echo "== ansible-lint (production profile)"
ansible-lint --offline -q
echo "== pytest"
# Test files run in parallel (pytest-xdist), one file per worker at a time: each worker starts its
# own lab (PostgreSQL, S3, SSH hosts on free ports). OPSBOOK_TEST_WORKERS=0 runs them in one process.
pytest -q -n "${OPSBOOK_TEST_WORKERS:-auto}" --dist loadfile "$@"
