#!/usr/bin/env python3
"""Build the opsbook.runbooks collection from the project's own files.

The project keeps one copy of every file, in the layout of a playbook project (library/,
module_utils/, action_plugins/, plugin_utils/, filter_plugins/, callback_plugins/,
doc_fragments/, roles/). ``collections/ansible_collections/opsbook/runbooks`` is the collection's
view of them: galaxy.yml, meta/runtime.yml and README.md of its own, and links for the rest
(plugins/modules -> library, roles -> roles, ...). The project's playbooks use that view through
ansible.cfg's collections_path.

``ansible-galaxy collection build`` follows no link that leaves the collection, so this script
copies the view into ``build/collection/ansible_collections/opsbook/runbooks`` with every link
followed (byte for byte, byte-code left out), then builds the tarball from that copy:

    python scripts/build_collection.py                  # build/opsbook-runbooks-<version>.tar.gz
    python scripts/build_collection.py --tree-only      # the copy only (for ansible-test sanity)
    ansible-galaxy collection install build/opsbook-runbooks-*.tar.gz
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NAMESPACE, NAME = "opsbook", "runbooks"
#: the collection's view of the project's files (links, and the collection's own metadata)
SOURCE = PROJECT_ROOT / "collections" / "ansible_collections" / NAMESPACE / NAME
#: what is never copied: byte-code and editor leftovers
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*~", ".*.swp")


def copy_tree(dest_root: Path) -> Path:
    """The collection as real files under dest_root/ansible_collections/opsbook/runbooks
    (replaced when it exists); its path."""
    tree = dest_root / "ansible_collections" / NAMESPACE / NAME
    if tree.exists():
        shutil.rmtree(tree)
    tree.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SOURCE, tree, symlinks=False, ignore=IGNORED)
    return tree


def ansible_galaxy() -> str:
    """ansible-galaxy beside this Python (the project's .venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "ansible-galaxy"
    return str(beside) if beside.exists() else "ansible-galaxy"


def build(output_dir: Path, work_dir: Path | None = None) -> Path:
    """Copy the collection into work_dir (default output_dir/collection), build its tarball into
    output_dir and return the tarball's path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tree = copy_tree(work_dir or output_dir / "collection")
    # run outside the project: its ansible.cfg plays no part in a build
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_CONFIG"}
    done = subprocess.run(
        [ansible_galaxy(), "collection", "build", str(tree), "--output-path", str(output_dir),
         "--force"],
        env=env,
        cwd=output_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ansible-galaxy collection build failed:\n{done.stdout}{done.stderr}")
    tarballs = sorted(output_dir.glob(f"{NAMESPACE}-{NAME}-*.tar.gz"), key=os.path.getmtime)
    return tarballs[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir", type=Path, default=PROJECT_ROOT / "build",
        help="where the tarball goes (default: build/)",
    )
    parser.add_argument(
        "--tree-only", action="store_true",
        help="only copy the collection into OUTPUT_DIR/collection (no tarball)",
    )
    args = parser.parse_args(argv)
    if args.tree_only:
        print(copy_tree(args.output_dir / "collection"))
    else:
        print(build(args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
