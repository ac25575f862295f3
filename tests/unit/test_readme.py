"""README and the pages under docs/ say what the code does: their tables of defaults against
the settings models, every documented `mrsa eval` command against the context check it would
meet, every table well formed and every relative link resolving; and README stays a front page
(short, with exactly the two setup commands)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from mrsa.engine.config import EngineConfig
from mrsa.engine.local import device_defaults
from mrsa.cli import build_parser, engine_from
from mrsa.evals.runner import parse_config
from mrsa.rsa.params import RsaParams
from mrsa.rsa.prompts import check_context
from mrsa.service.settings import AdmissionSettings, Settings
from tests.fakes import FakeTokenizer

ROOT = Path(__file__).resolve().parents[2]
# README and every page under docs/, by their path from the checkout's root.
PAGES = {
    p.relative_to(ROOT).as_posix(): p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
}
README_MAX_LINES = 200
CPU_MAX_MODEL_LEN = device_defaults(EngineConfig(), cpu=True, native_bf16=False)["max_model_len"]
# A long competition problem: the documented commands must leave room for one.
QUESTION = [{"role": "user", "content": " ".join(["word"] * 400)}]


def _table(page: str, heading: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first table after ``heading`` on ``page``."""
    assert heading in PAGES[page], f"{heading!r} is not on {page}"
    lines = PAGES[page].split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:  # after the header and its separator
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert rows, f"no table under {heading!r}"
    return rows


def _defaults(page: str, heading: str) -> dict[str, str]:
    """The first column against the last (the default) of the table after ``heading``."""
    return {row[0]: row[-1] for row in _table(page, heading)}


def _shown(value: object) -> str:
    return "none" if value is None else str(value).lower()


def test_the_rsa_table_shows_the_defaults_of_rsa_params() -> None:
    rows = _defaults("docs/api.md", "### The `rsa` object")
    defaults = RsaParams()
    checked = 0
    for names, shown in rows.items():
        fields = re.findall(r"`([a-z_]+)`", names)
        values = [v.strip().strip("`") for v in shown.split(",")]
        if not fields or not all(f in RsaParams.model_fields for f in fields):
            continue
        if fields == ["final_max_tokens"]:
            assert defaults.final_max_tokens is None and values == ["trace_max_tokens"], shown
        elif fields == ["seed"]:
            assert defaults.seed is None and values == ["random"], shown
        else:
            assert values == [_shown(getattr(defaults, f)) for f in fields], (names, shown)
        checked += len(fields)
    assert checked == len(RsaParams.model_fields), f"the table documents {checked} of {len(RsaParams.model_fields)} fields"


def test_the_admission_table_shows_the_settings_defaults() -> None:
    rows = _defaults("docs/operations.md", "### Admission and limits")
    admission = AdmissionSettings()
    for field in AdmissionSettings.model_fields:
        assert rows[f"`MRSA_ADMISSION__{field.upper()}`"] == _shown(getattr(admission, field)), field
    assert rows["`MRSA_MAX_BODY_BYTES`"] == f"{Settings().max_body_bytes // 2**20} MiB"
    assert rows["`MRSA_STORE_TTL_S`"] == f"{Settings().store_ttl_s:g}"


def _sh_lines(text: str) -> list[list[str]]:
    """The words of every line of every sh block of ``text`` (continuation lines joined)."""
    return [
        shlex.split(line, comments=True)
        for block in re.findall(r"```sh\n(.*?)```", text, re.S)
        for line in block.replace("\\\n", " ").splitlines()
    ]


def _commands() -> list[tuple[str, list[str], list[str]]]:
    """Every ``mrsa eval`` of a sh block of every page, with the ``mrsa serve`` of the same block."""
    found = []
    for page, text in PAGES.items():
        for block in re.findall(r"```sh\n(.*?)```", text, re.S):
            lines = _sh_lines(f"```sh\n{block}```")
            serve = next((w[w.index("serve") + 1:] for w in lines if "serve" in w and any(x.endswith("mrsa") for x in w)), [])
            for words in lines:
                if "eval" in words and any(x.endswith("mrsa") for x in words):
                    found.append((page, words[words.index("eval") + 1:], serve))
    return found


def test_the_pages_document_eval_commands() -> None:
    assert len(_commands()) >= 3


@pytest.mark.parametrize(
    ("page", "argv", "serve"), _commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60]
)
def test_every_documented_eval_command_fits_its_context(page: str, argv: list[str], serve: list[str]) -> None:
    args = build_parser().parse_args(["eval", *(a for a in argv if a != "&")])
    server = argparse.ArgumentParser()
    server.add_argument("--max-model-len", type=int)
    served, _ = server.parse_known_args(serve)
    max_model_len = (served.max_model_len if args.url else engine_from(args).engine.max_model_len) or CPU_MAX_MODEL_LEN
    given = {"tail_tokens": args.tail_tokens, "trace_max_tokens": args.trace_max_tokens, "temperature": args.temperature}
    for spec in args.configs or ["single", "majority:n=8", "rsa:n=4,k=2,t=2"]:
        params = parse_config(spec, {k: v for k, v in given.items() if v is not None}).params
        check_context(FakeTokenizer(), max_model_len, QUESTION, params)  # raises ContextTooLongError


def test_the_effort_table_shows_the_presets() -> None:
    from mrsa.service.settings import EFFORT_PRESETS

    planned = {effort: preset for effort, preset in EFFORT_PRESETS.items() if preset.get("method", "rsa") == "rsa"}
    rows = {
        cells[0].strip("`"): tuple(int(c) for c in cells[1:4])
        for cells in _table("docs/api.md", "### `reasoning_effort`") if cells[0].strip("`") in planned
    }
    defaults = RsaParams()
    for effort, preset in planned.items():
        params = defaults.model_copy(update=preset)
        assert rows[effort] == (params.population, params.k, params.rounds), effort
    section = PAGES["docs/api.md"].split("### `reasoning_effort`", 1)[1].split("\n## ", 1)[0]
    for effort in EFFORT_PRESETS.keys() - planned.keys():  # adaptive: no fixed N, K, T
        assert f"`{effort}`" in section, effort


def test_the_flag_table_names_the_shortcuts_and_their_settings() -> None:
    from mrsa.cli import SHORT_FLAGS

    documented = {
        cells[0].strip("`").lstrip("-"): re.match(r"`([a-z_.]+)`", cells[1])[1] for cells in _table("docs/operations.md", "## Configuration")
    }
    assert documented == {flag: path for path, flag in SHORT_FLAGS.items()}


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", outside_code, re.M)}


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page: str) -> None:
    """Links to files and headings, the moved pages' included: the target exists, and so does its anchor."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", PAGES[page]):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / page).parent / path if path else ROOT / page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
            broken.append(target)
    assert not broken, f"{page}: {broken}"


@pytest.mark.parametrize("page", PAGES)
def test_every_table_is_well_formed(page: str) -> None:
    """Each row of a table has as many cells as its header, and the header its separator."""
    text = re.sub(r"```.*?```", "", PAGES[page], flags=re.S)
    tables = re.findall(r"(?:^\|.*\|[ \t]*\n)+", text, re.M)
    for table in tables:
        rows = [[c for c in row.strip().strip("|").split("|")] for row in table.splitlines()]
        assert len(rows) >= 3 and set("".join(rows[1])) <= set("-: "), table
        assert all(len(row) == len(rows[0]) for row in rows), table


def test_readme_is_a_front_page() -> None:
    """Short enough to read in five minutes; the rest lives under docs/, and README links every page."""
    readme = PAGES["README.md"]
    assert len(readme.splitlines()) <= README_MAX_LINES
    for page in PAGES:
        if page != "README.md":
            assert f"]({page})" in readme, f"README does not link {page}"


def test_readme_holds_exactly_the_two_setup_commands() -> None:
    readme = PAGES["README.md"]
    setup = readme.split("\n## Setup", 1)[1].split("\n## ", 1)[0]
    assert [w for w in _sh_lines(setup) if w] == [["make", "serve"], ["make", "test"]]
    makes = [w for w in _sh_lines(readme) if w and w[0] == "make"]
    assert makes == [["make", "serve"], ["make", "test"]], makes


def test_readmes_effort_table_gives_the_measured_figures() -> None:
    """Accuracy and tokens per level as the default model's shipped preset file records them
    (the reference row as the calibration measured it), wall times as the committed
    ``mrsa bench effort`` run measured them; every level the file presets is a row."""
    import json

    from mrsa.engine.provision import DEFAULT_MODEL
    from mrsa.service.presets import load_presets, shipped_presets

    heading = "## What each effort buys"
    section = PAGES["README.md"].split(heading, 1)[1].split("\n## ", 1)[0]
    bench = json.loads((ROOT / re.search(r"\]\((docs/bench/effort-[^)]+\.json)\)", section)[1]).read_text())
    presets = load_presets(shipped_presets(DEFAULT_MODEL))
    figures = presets.measured["figures"]
    calibration = json.loads((ROOT / "docs/eval/calibrate-gsm8k-qwen15b/calibration.json").read_text())
    shown = set()
    for cells in _table("README.md", heading):
        levels = re.findall(r"`(\w+)`", cells[0])
        if not levels:  # the reference
            (reference,) = [p for p in calibration["points"] if p["name"] == calibration["meta"]["reference"]]
            assert cells[2:4] == [f"{reference['accuracy']:.3f}", f"{reference['tokens_mean']:,.0f}"], cells
            continue
        timed = bench["levels"][levels[0]]
        assert bench["presets"][levels[0]] == presets.efforts[levels[0]], "the bench ran another preset"
        for level in levels:  # levels sharing a row share a preset
            assert presets.efforts[level] == presets.efforts[levels[0]], level
            assert cells[2:4] == [f"{figures[level]['accuracy']:.3f}", f"{figures[level]['tokens_mean']:,.0f}"], level
            assert cells[4] == f"{timed['p50_s']:.0f} s / {timed['p95_s']:.0f} s", level
            shown.add(level)
    assert shown == set(presets.efforts)
