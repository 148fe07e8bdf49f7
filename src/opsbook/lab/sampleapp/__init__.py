"""The sample app and its release artifacts.

``build_release(version, out_dir)`` packs ``app.py`` and a ``VERSION`` file into
``sampleapp-<version>.tar.gz``. The archive is deterministic (fixed mtimes,
owners, modes and order; no gzip timestamp), so one version always builds
byte-identical and its sha256 is stable: deploys can verify what they ship.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

__all__ = ["APP_SOURCE", "ARTIFACT_MTIME", "artifact_name", "build_release", "sha256_file"]

APP_SOURCE = Path(__file__).with_name("app.py")
# 2024-01-01T00:00:00Z: the mtime of every member of every artifact.
ARTIFACT_MTIME = 1704067200


def artifact_name(version: str) -> str:
    return f"sampleapp-{version}.tar.gz"


def _member(name: str, data: bytes, mode: int) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = ARTIFACT_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info, io.BytesIO(data)


def build_release(version: str, out_dir: Path | str) -> Path:
    """Build out_dir/sampleapp-<version>.tar.gz (app.py + VERSION at top level)."""
    if not version or "/" in version or version.startswith("."):
        raise ValueError(f"invalid release version {version!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / artifact_name(version)
    members = [
        _member("VERSION", f"{version}\n".encode(), 0o644),
        _member("app.py", APP_SOURCE.read_bytes(), 0o755),
    ]
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:  # noqa: SIM117
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for info, data in sorted(members, key=lambda m: m[0].name):
                tar.addfile(info, data)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, target)
    return target


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()
