"""The distribution installs one import package, ``mrsa``, and nothing that could clobber
another: PyPI's ``rsa`` (a google-auth dependency) and Hugging Face's ``kernels`` install and
import beside it. Builds the wheel, installs it into a fresh venv together with those two
packages (network: PyPI only), and imports all of them from outside the checkout."""

from __future__ import annotations

import importlib.metadata
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("service", "rsa", "engine", "kernels", "benchmarks", "evals", "research")


def _run(*cmd: str, cwd: Path | str = "/") -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout.strip()


# What a fresh clone lacks: a checkout's build/ keeps every module it ever built, and setuptools
# packs build/lib whole, so a module moved out of the package would still ship from it.
BUILD_OUTPUTS = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", "docs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    tree = tmp_path_factory.mktemp("tree") / "markovian-rsa"
    shutil.copytree(ROOT, tree, ignore=BUILD_OUTPUTS)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(tree))
    (found,) = out.glob("markovian_rsa-*.whl")
    return found


def test_the_wheel_holds_one_package_and_no_research_or_benchmarks(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"mrsa"}
    assert {"mrsa/service/app.py", "mrsa/rsa/plan.py", "mrsa/engine/local.py", "mrsa/kernels/cca/prefill.py",
            "mrsa/evals/runner.py", "mrsa/cli.py", "mrsa/service/static/trace.html"} <= set(names)
    assert not [n for n in names if "bench" in n.split("/")[-1]], "benchmark scripts must not ship"
    # Every source file of the product is in it (a subpackage left out of pyproject's list
    # would be missing from the wheel while the editable install still finds it), and nothing
    # else (research/ and benchmarks/ run from a checkout).
    sources = {f"mrsa/{p.relative_to(ROOT / 'mrsa').as_posix()}" for p in (ROOT / "mrsa").glob("*.py")}
    for part in ("service", "rsa", "engine", "kernels", "evals"):
        sources |= {f"mrsa/{part}/{p.relative_to(ROOT / part).as_posix()}" for p in (ROOT / part).rglob("*.py")}
    shipped = {n for n in names if n.endswith(".py")}
    assert sources == shipped, (sorted(sources - shipped), sorted(shipped - sources))
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "mrsa = mrsa.cli:main" in text and "zaya = mrsa.engine.zaya.plugin:register" in text


def test_installs_and_imports_beside_pypi_rsa_and_kernels(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys._base_executable, "-m", "venv", str(venv))
    py = venv / "bin" / "python"
    fresh = Path(_run(str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    # The project's dependencies come from this environment (a path entry: its .pth files, our
    # editable install among them, are not processed), so only the wheel provides mrsa.
    (fresh / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # rsa and kernels as pip installs them; their dependencies and ours (the test extra installs
    # rsa and kernels here too) come from this environment.
    _run(str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--ignore-installed", str(wheel), "rsa==4.9.1", "kernels==0.17.2")
    out = _run(str(py), "-c", (
        "import mrsa, mrsa.service.app, mrsa.rsa, mrsa.engine, mrsa.kernels, mrsa.evals, rsa, kernels;"
        "from rsa import PublicKey; from kernels import get_kernel;"
        "print(mrsa.__file__); print(rsa.__file__); print(kernels.__file__)"
    ))
    ours, theirs_rsa, theirs_kernels = (Path(line) for line in out.splitlines())
    for path in (ours, theirs_rsa, theirs_kernels):
        assert path.is_relative_to(fresh), path
    assert ours.parent.name == "mrsa"
    owners = _run(str(py), "-c", "import importlib.metadata as m, json; d = m.packages_distributions();"
                  "print(json.dumps({k: sorted(set(d.get(k, []))) for k in ('rsa', 'kernels', 'mrsa')}))")
    assert owners == '{"rsa": ["rsa"], "kernels": ["kernels"], "mrsa": ["markovian-rsa"]}'


def test_this_environment_has_no_top_level_package_of_ours() -> None:
    """The development install (editable) maps only ``mrsa``; outside the checkout, none of
    the folder names resolves to our code."""
    for name in OURS:
        origin = _run(sys.executable, "-c", f"import importlib.util as u; s = u.find_spec({name!r}); "
                      "print(s.origin if s else '')")
        assert not origin or not Path(origin).is_relative_to(ROOT / name), f"`import {name}` finds our {origin}"
    origin = _run(sys.executable, "-c", "import mrsa.rsa.plan as p; print(p.__file__)")
    assert Path(origin) == ROOT / "rsa" / "plan.py"


def test_from_the_checkout_root_the_bare_names_are_still_pypis() -> None:
    """With the checkout's root on sys.path (python started there, as pytest and the e2e
    servers are), ``rsa`` and ``kernels`` still import the installed libraries, and
    transformers still loads its Hugging Face kernels integration."""
    out = _run(sys.executable, "-c", (
        "import rsa, kernels; from rsa import PublicKey;"
        "from transformers.utils.import_utils import is_kernels_available;"
        "import transformers.integrations.hub_kernels;"
        "import mrsa.rsa, mrsa.kernels.cca;"
        "print(rsa.__file__); print(kernels.__file__); print(is_kernels_available()); print(mrsa.rsa.RsaRun.__name__)"
    ), cwd=ROOT)
    rsa_file, kernels_file, available, run = out.splitlines()
    assert not Path(rsa_file).is_relative_to(ROOT / "rsa") and not Path(kernels_file).is_relative_to(ROOT / "kernels")
    assert (available, run) == ("True", "RsaRun")
