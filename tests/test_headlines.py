"""The headline tables of README.md and docs/results.md are what the current records give, and every current record
names the command, the commit and the CPU that made it (benchmarks/headlines.py, benchmarks/records.py)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import headlines  # noqa: E402 -- a benchmark script, importable from its folder

CURRENT = sorted(headlines.RESULTS.glob("*.json"))


def test_every_headline_table_is_shown_as_its_records_give_it() -> None:
    texts = {path.name: path.read_text() for path in headlines.SHOWN_IN}
    for name in headlines.TABLES:
        assert any(headlines.marked(name).search(text) for text in texts.values()), f"no file shows the {name} table"
    for name, text in texts.items():
        assert headlines.marked("cpu-speed").search(text), f"{name} lacks the CPU speed table"
    assert headlines.stale() == []  # else: python benchmarks/headlines.py


def test_a_number_changed_by_hand_is_caught(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    text = headlines.SHOWN_IN[0].read_text()
    table = headlines.marked("cpu-speed").search(text).group(2)
    first_ratio = re.search(r"\d+\.\d\dx", table).group(0)
    readme.write_text(text.replace(first_ratio, f"{float(first_ratio[:-1]) + 0.5:.2f}x", 1))
    assert headlines.stale((readme,)) == ["README.md: cpu-speed"]


@pytest.mark.parametrize("path", CURRENT, ids=[p.name for p in CURRENT])
def test_every_current_record_can_be_reproduced_from_the_tree(path: Path) -> None:
    record = json.loads(path.read_text())
    assert record["command"].startswith("python benchmarks/")
    assert re.fullmatch(r"[0-9a-f]{40}", record["commit"]) and record["tree_clean"], "made from a changed tree"
    assert record["hardware"]["cpu"] and isinstance(record["hardware"]["cpu_flags"], list)
