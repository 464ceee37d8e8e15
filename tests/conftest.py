"""Shared fixtures: the labelled evaluation set (read in place, never copied) and sample media."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "anon_ray" / "samples"


def eval_root() -> Path:
    return Path(os.environ.get("ANON_RAY_EVAL_DATA", REPO.parent / "shared" / "data" / "eval"))


@pytest.fixture(scope="session")
def eval_data() -> Path:
    root = eval_root()
    if not (root / "faces" / "annotations.jsonl").is_file():
        pytest.fail(f"evaluation data not found at {root} (set ANON_RAY_EVAL_DATA)")
    return root


def annotations(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLES
