"""markovian-rsa: an OpenAI-compatible test-time compute server (Markovian RSA over vLLM).

One import package. Its parts, lowest layer first; each imports only the layers below it:

- :mod:`mrsa.kernels`: Triton kernels (CCA for ZAYA1) beside their PyTorch references;
- :mod:`mrsa.engine`: the engine protocol, embedded vLLM, remote replicas, the ZAYA1 plugin,
  built-in model provisioning;
- :mod:`mrsa.rsa`: the algorithm, pure, against the engine protocol only;
- :mod:`mrsa.service` (the HTTP API) and :mod:`mrsa.evals` (``mrsa eval``);
- :mod:`mrsa.cli`: the ``mrsa`` command, the one module that imports everything.
"""

__version__ = "0.1.0"


def step_aside(name: str, module_file: str) -> None:
    """Give a top-level name back to the distribution that owns it.

    Two of our source folders share their names with PyPI packages (``rsa``, the crypto library
    google-auth uses; ``kernels``, Hugging Face's, which transformers imports when installed).
    Installed, they exist only as ``mrsa.rsa`` and ``mrsa.kernels``. But a process whose
    ``sys.path`` holds the checkout's root (``python`` started there, pytest's rootdir) would
    find the folder first under the bare name. A folder's ``__init__`` calls this when it was
    imported under that bare name: the installed package of that name, if there is one, is
    imported in its place (an import returns whatever ``sys.modules`` holds once the module
    has run), so ``import kernels`` means Hugging Face's wherever it is started.
    """
    import importlib
    import sys
    from pathlib import Path

    checkout = Path(module_file).resolve().parent.parent
    saved_path, ours = sys.path[:], sys.modules.pop(name)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != checkout]
    try:
        sys.modules[name] = importlib.import_module(name)
    except ImportError:  # no such distribution here: the folder keeps the name
        sys.modules[name] = ours
    finally:
        sys.path[:] = saved_path
