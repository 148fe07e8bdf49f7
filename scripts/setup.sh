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
# purpose). Re-installed whenever pyproject.toml or constraints.txt differ from the last install.
stamp=.venv/.opsbook-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing opsbook and its dev tools into .venv (versions from constraints.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  echo "$want" >"$stamp"
fi
echo "setup: ready ($(.venv/bin/ansible --version | sed -n 1p), $(/usr/lib/postgresql/15/bin/postgres --version))"
