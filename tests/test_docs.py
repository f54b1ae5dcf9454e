"""The README tells the truth: its tables come from the registries and CI runs its test command."""
from __future__ import annotations

import re
from pathlib import Path

from pipeline.cli import codec_table, dataset_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_codec_table_matches_registry():
    assert codec_table() in README, "README codec table is stale: paste `mpq codecs --markdown`"


def test_dataset_table_matches_registry():
    assert dataset_table() in README, "README dataset table is stale: paste `mpq datasets --markdown`"


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    test_cmd = next(b.strip() for b in blocks if "pytest" in b and "pip install" in b)
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines()
                if ln.strip() and not ln.startswith("#") and not ln.startswith(("set ", "cd "))]
    assert ci_lines == [test_cmd]
