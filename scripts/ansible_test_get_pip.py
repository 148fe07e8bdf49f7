"""Stand-in for ansible-test's pip bootstrap script.

ansible-test bootstraps pip into each virtual environment it makes (``--requirements``,
``--venv``) with ``get-pip-<version>.py`` from ci-files.testing.ansible.com, cached as
``~/.ansible/test/cache/get_pip_<version>.py``. Where that host cannot be reached,
scripts/sanity.sh puts this file in the cache instead: it gives the venv pip from the
interpreter's own ``ensurepip``, then installs what get-pip would have (``pip==<version>``,
the arguments ansible-test passes) from the package index pip is configured with.
"""

import subprocess
import sys


def main() -> int:
    # get-pip's own switches; pip install does not know them (no setuptools or wheel is asked)
    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    subprocess.check_call(
        [sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL
    )
    return subprocess.call([sys.executable, "-m", "pip", "install", *args])


if __name__ == "__main__":
    sys.exit(main())
