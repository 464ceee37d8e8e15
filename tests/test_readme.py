"""Every command line in the README's code blocks runs as written: the anon-ray, anon-ray-eval and
anon-ray-bench lines compose with Hydra (a misspelt key or group fails), anon-ray-report lines
parse, make lines name real targets. Also the figures table: every row names its command and date."""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import REPO, composed

from anon_ray.tools.report import parse_args as report_args

README = (REPO / "README.md").read_text()
CONFIG_OF = {"anon-ray": "config", "anon-ray-rerender": "config", "anon-ray-review": "config", "anon-ray-eval": "eval",
             "anon-ray-bench": "bench"}


def figure_rows() -> list[str]:
    """The rows of the current-figures table (header and rule left out)."""
    section = README.split("## Current figures", 1)[1].split("\n## ", 1)[0]
    return [r for r in section.splitlines() if r.startswith("|") and not set(r) <= set("|- ")][1:]


def code_lines() -> list[str]:
    """Lines of the fenced code blocks, comments removed, continuation lines joined, and the
    commands quoted in the figures table."""
    lines = [c for row in figure_rows() for c in re.findall(r"`(anon-ray[^`]*)`", row)]
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", README, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def commands() -> list[tuple[str, list[str]]]:
    """(program, arguments) of each anon-ray tool or make line, `ray job submit`'s entry point included."""
    out = []
    for line in code_lines():
        if not line.startswith(("anon-ray", "ray job", "make")):
            continue  # not a command line (the overrides file's schema, ...)
        words = shlex.split(line)
        if words[:3] == ["ray", "job", "submit"]:
            words = ["anon-ray", *words[words.index("anon_ray") + 1:]]  # `-- python -m anon_ray ARGS`
        if words and (words[0] in CONFIG_OF or words[0] in ("anon-ray-report", "make")):
            out.append((words[0], words[1:]))
    return out


def test_the_readme_shows_every_tool():
    programs = {p for p, _ in commands()}
    assert programs >= {"anon-ray", "anon-ray-rerender", "anon-ray-review", "anon-ray-eval", "anon-ray-bench",
                        "anon-ray-report", "make"}, programs


@pytest.mark.parametrize("program, args", [c for c in commands() if c[0] in CONFIG_OF], ids=" ".join)
def test_hydra_lines_compose(program, args):
    # Hydra's own keys (hydra.verbose=...) are set by its launcher, not by composition.
    overrides = dict(a.split("=", 1) for a in args if not a.startswith("hydra."))
    assert all("=" in a for a in args), f"not a key=value override in {args}"
    composed(CONFIG_OF[program], **overrides)


@pytest.mark.parametrize("args", [a for p, a in commands() if p == "anon-ray-report"], ids=" ".join)
def test_report_lines_parse(args):
    assert report_args(args).output


def test_make_lines_name_real_targets():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    for program, args in commands():
        if program == "make":
            assert set(args) <= targets, args


def test_a_misspelt_key_is_caught():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        composed("config", **{"detect.face.treshold": "0.1"})


def test_every_figure_row_names_its_command_and_date():
    rows = figure_rows()
    assert len(rows) >= 5, rows
    for row in rows:
        assert re.search(r"20\d\d-\d\d-\d\d", row) and "`anon-ray" in row, f"row without its date or command: {row}"
