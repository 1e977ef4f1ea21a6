"""The user's documents stand alone: nothing points outside the project, every link and step they name exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "inventory" / "example.py"]


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def test_nothing_refers_to_the_team_notes_outside_the_project():
    """The README once pointed at ../shared/CONTRACT.md, which no user has (issue 19, item 5)."""
    this = Path(__file__).resolve()
    found = [str(path.relative_to(ROOT)) for path in tracked_files() if path != this
             and re.search(r"\.\./shared|/work/shared|CONTRACT\.md", path.read_text(errors="replace"))]
    assert found == []


def test_every_relative_link_of_the_documents_exists():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)\)", doc.read_text()):
            if not re.match(r"[a-z]+:", target):
                assert (doc.parent / target).exists(), (doc.name, target)


def test_every_step_the_walkthrough_refers_to_exists():
    """first-fleet.md once sent the reader to a "step 10" it did not have."""
    text = (ROOT / "docs" / "first-fleet.md").read_text()
    steps = set(re.findall(r"^## (\d+)\. ", text, re.M))
    assert steps == {str(n) for n in range(1, len(steps) + 1)}, steps
    assert set(re.findall(r"\bsteps? (\d+)\b", text)) <= steps


def test_the_readme_says_how_to_install_and_which_commands_are_the_projects():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/install.sh" in readme and 'export PATH="$PWD/.venv/bin:$PATH"' in readme
