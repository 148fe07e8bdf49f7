#!/usr/bin/env bash
# ansible-test sanity on the built collection opsbook.runbooks, with Python 3.11: every sanity
# test ansible-core's ansible-test has for a collection. What it cannot pass here is listed,
# with the reason, in collections/ansible_collections/opsbook/runbooks/tests/sanity/ignore-2.19.txt.
#
#   bash scripts/sanity.sh                      # all of them
#   bash scripts/sanity.sh --test pylint        # extra arguments go to ansible-test sanity
#
# 1. scripts/build_collection.py --tree-only copies the collection (links followed) into a
#    temporary directory (.../collection/ansible_collections/opsbook/runbooks): ansible-test
#    runs there.
# 2. .cache/sanity-venv: ansible-core at constraints.txt's version, made once and reused (made
#    again when that pin or the Python changes). ansible-test installs each test's own pinned
#    requirements (--requirements) into it and into the venvs it keeps in its own home,
#    .cache/ansible-test-home/.ansible/test/.
# 3. ansible-test bootstraps pip into those venvs with a get-pip script it downloads from
#    ci-files.testing.ansible.com (which this network does not reach); where that home has no copy
#    yet, scripts/ansible_test_get_pip.py
#    (ensurepip, then pip from the package index) is cached in its place.
# The exit status is ansible-test's.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# the Python 3.11 of the project's .venv (scripts/setup.sh made it) unless told otherwise
python=${OPSBOOK_SANITY_PYTHON:-.venv/bin/python}
venv=.cache/sanity-venv

core=$(grep -E '^ansible-core==' constraints.txt)
want=$(printf '%s\n%s\n' "$core" "$("$python" -VV)" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$venv/.opsbook-sanity" 2>/dev/null)" != "$want" ]; then
  echo "sanity: creating $venv ($core)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt ansible-core
  echo "$want" >"$venv/.opsbook-sanity"
fi

# the pip version ansible-test bootstraps (ansible_test/_internal/python_requirements.py)
pip_version=$("$venv/bin/python" - <<'PY'
import pathlib, re
import ansible_test
source = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", source.read_text()).group(1))
PY
)
# ansible-test keeps its venvs and caches under $HOME/.ansible/test: a home of its own here, so the
# stand-in below is never seen by another ansible-test user of this machine
export HOME="$root/.cache/ansible-test-home"
get_pip="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [ ! -s "$get_pip" ]; then
  mkdir -p "$(dirname "$get_pip")"
  cp scripts/ansible_test_get_pip.py "$get_pip"
fi

# outside the project's git work tree: inside one, ansible-test lists the files with git
# (git ls-files), which knows no git-ignored copy
work=$(mktemp -d "${TMPDIR:-/tmp}/opsbook-sanity.XXXXXX")
child=""
trap '[ -z "$child" ] || kill "$child" 2>/dev/null; rm -rf "$work"' EXIT
trap 'exit 143' TERM INT
tree=$("$venv/bin/python" scripts/build_collection.py --tree-only --output-dir "$work")
cd "$tree"
# ansible-test reads no ansible.cfg of the project's; ANSIBLE_CONFIG from a caller is not ours
unset ANSIBLE_CONFIG
"$root/$venv/bin/ansible-test" sanity --local --requirements --python 3.11 "$@" &
child=$!
rc=0
wait "$child" || rc=$?
child=""
exit "$rc"
