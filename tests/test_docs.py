"""Every `vitcompress` command shown in README.md and docs/ is accepted by the real parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import REPO
from vitcompress.artifact import read_meta
from vitcompress.cli import _parser

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shown_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                words = shlex.split(line) if line else []
                if "vitcompress" not in words or "..." in line:
                    continue
                found.append((f"{doc.name}: {line}", words[words.index("vitcompress") + 1 :]))
    return found


@pytest.mark.parametrize("where, argv", shown_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_command_parses(where: str, argv: list[str]) -> None:
    _parser().parse_args(argv)


def test_docs_show_commands() -> None:
    assert len(shown_commands()) >= 4


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "api-demo" / "model.safetensors").is_file()
    assert read_meta(tmp_path / "runs" / "api-demo").metrics["top1"] > 0.3  # it learned: chance is 0.1


def test_referenced_docs_exist() -> None:
    """Error messages, comments and docs that send a reader to docs/X.md send them somewhere real."""
    sources = [REPO / "Makefile", *DOCS, *(p for d in ("vitcompress", "compress", "export", "benchmarks")
                                          for p in sorted((REPO / d).rglob("*.py")))]
    missing = {f"{src.relative_to(REPO)}: {ref}" for src in sources
               for ref in re.findall(r"docs/[\w-]+\.md", src.read_text()) if not (REPO / ref).is_file()}
    assert not missing, sorted(missing)
