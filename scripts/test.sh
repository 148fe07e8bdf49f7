#!/usr/bin/env bash
# The whole check, as CI runs it: set up, lint, then pytest: the unit tests first (ansible-doc
# renders every module: tests/unit/test_module_docs.py), then the integration tests against real
# servers the harness starts. ansible-lint and ansible-test sanity run beside pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
# ansible-lint needs about 45 CPU seconds, on one core, and nothing of the lab: it runs beside
# pytest, at a lower priority (nice), on the cycles the test workers leave idle (their waits, the
# last file of one worker); its output is printed, and its failure counted, after pytest.
echo "== ansible-lint (production profile): beside pytest, its output after it"
lint_log=$(mktemp)
nice -n 10 ansible-lint --offline -q >"$lint_log" 2>&1 &
lint_pid=$!
# ansible-test sanity on the built collection (scripts/sanity.sh) likewise: about 55 CPU seconds
# (pylint 30 of them), 100 on a fresh machine, where it first makes .cache/sanity-venv.
echo "== ansible-test sanity (collection opsbook.runbooks): beside pytest, its output after it"
sanity_log=$(mktemp)
nice -n 10 bash scripts/sanity.sh >"$sanity_log" 2>&1 &
sanity_pid=$!
trap '[ -z "$lint_pid" ] || kill "$lint_pid" 2>/dev/null; [ -z "$sanity_pid" ] || kill "$sanity_pid" 2>/dev/null; rm -f "$lint_log" "$sanity_log"' EXIT
echo "== pytest"
# Test files run in parallel (pytest-xdist), one file per worker at a time: each worker starts its
# own lab (PostgreSQL, S3, SSH hosts on free ports). OPSBOOK_TEST_WORKERS=0 runs them in one process.
pytest_rc=0
pytest -q -n "${OPSBOOK_TEST_WORKERS:-auto}" --dist loadfile "$@" || pytest_rc=$?
lint_rc=0
wait "$lint_pid" || lint_rc=$?
lint_pid=""
echo "== ansible-lint (production profile)"
cat "$lint_log"
if [ "$lint_rc" -ne 0 ]; then
  echo "ansible-lint failed (exit $lint_rc)" >&2
fi
sanity_rc=0
wait "$sanity_pid" || sanity_rc=$?
sanity_pid=""
echo "== ansible-test sanity (collection opsbook.runbooks)"
grep -vE '^(Collecting|Downloading|Processing|Requirement already|Installing collected|Successfully installed|Looking in|Using cached|WARNING: Location|  |$)' "$sanity_log" || true
if [ "$sanity_rc" -ne 0 ]; then
  echo "ansible-test sanity failed (exit $sanity_rc): bash scripts/sanity.sh shows it all" >&2
fi
if [ "$pytest_rc" -ne 0 ]; then
  exit "$pytest_rc"
fi
if [ "$lint_rc" -ne 0 ]; then
  exit "$lint_rc"
fi
exit "$sanity_rc"
