#!/usr/bin/env bash
# Set up opsbook on this machine: the OS packages the sandbox and the tests
# use (PostgreSQL 15, OpenSSH server, zstd, nginx), then a virtualenv in .venv with
# opsbook and its dev tools at the versions in constraints.txt. Safe to re-run: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15 postgresql-client-15 postgresql-contrib)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v zstd >/dev/null || need+=(zstd)
# nginx: the maintenance-mode recipe in docs/maintenance-mode.md is tested with a real nginx.
[ -x /usr/sbin/nginx ] || need+=(nginx)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# cron: `opsbook schedule` edits crontabs with its crontab program (tests/integration/test_schedule_cron.py).
command -v crontab >/dev/null || need+=(cron)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing OS packages: ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "setup: need root (or sudo) to install: ${need[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # Debian starts services from postinst; the sandbox and the tests run their own instances,
  # so service starts are refused while installing (policy-rc.d exit 101, as container images do).
  policy=/usr/sbin/policy-rc.d
  if [ -z "$sudo" ] && [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
# The exact versions the suite passed with (constraints.txt; `bash scripts/lock.sh` updates it on
# purpose). Re-installed whenever pyproject.toml, requirements.txt (its runtime dependencies) or
# constraints.txt differ from the last install.
stamp=.venv/.opsbook-installed
want=$(cat pyproject.toml requirements.txt constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing opsbook and its dev tools into .venv (versions from constraints.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  echo "$want" >"$stamp"
fi
# awx.awx, for playbooks/awx_setup.yml only (no runbook needs it): the collection as the `ansible`
# 12.3.0 bundle ships it (awx.awx 24.6.1; the 14.x bundle no longer carries it), its wheel fetched
# once by pip (hash-pinned) and only ansible_collections/awx/awx kept, in the git-ignored
# .cache/collections that ansible.cfg's collections_path names.
awx_dir=.cache/collections/ansible_collections/awx/awx
if ! grep -qs '"version": "24.6.1"' "$awx_dir/MANIFEST.json"; then
  echo "setup: fetching the awx.awx collection 24.6.1 (from the ansible 12.3.0 wheel)"
  tmp=$(mktemp -d)
  echo 'ansible==12.3.0 --hash=sha256:cd156f82fa87f7a899212b0efa9f7ca3a24d609212de9f78428a572eb01e5414' >"$tmp/awx.txt"
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$tmp/awx.txt" -d "$tmp"
  .venv/bin/python - "$tmp" <<'PY'
import pathlib, sys, zipfile
tmp = pathlib.Path(sys.argv[1])
with zipfile.ZipFile(tmp / "ansible-12.3.0-py3-none-any.whl") as wheel:
    wheel.extractall(tmp / "c", [n for n in wheel.namelist() if n.startswith("ansible_collections/awx/awx/")])
PY
  mkdir -p "$(dirname "$awx_dir")" && rm -rf "$awx_dir" && mv "$tmp/c/ansible_collections/awx/awx" "$awx_dir"
  rm -rf "$tmp"
fi
echo "setup: ready ($(.venv/bin/ansible --version | sed -n 1p), $(/usr/lib/postgresql/15/bin/postgres --version))"
