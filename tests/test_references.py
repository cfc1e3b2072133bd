"""Every reference in the repository is one a user can follow: no tracked file points at notes that
are not in it (the project's reference, design and style notes) or at a folder beside or outside the
checkout. A fact is cited by its paper (table, page) or by a file of this repository or of an
official public one."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Notes kept outside the repository, and the paths that reach outside it.
FORBIDDEN = re.compile(r"REFERENCE\.md|DESIGN\.md|STYLE\.md|/work/share[d]|\.\./share[d]")  # [d]: not a hit itself
# The one reach outside the checkout the project has: .ci/run decodes the CI machine's offline CIFAR-10
# copy, which that machine keeps beside the checkout. A location of the CI machine, not a citation.
ALLOWED = {(".ci/run", "../" + "shared/data/cifar10/materialize.py")}


def forbidden_references(text: str) -> list[str]:
    """The lines of `text` that name a note or a path outside the repository."""
    return [line.strip() for line in text.splitlines() if FORBIDDEN.search(line)]


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / name for name in listed.decode().split("\0") if name]
    return [p for p in paths if p.is_file() and b"\0" not in p.read_bytes()[:8192]]  # text: no NUL byte


@pytest.fixture(scope="module")
def files() -> list[Path]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to read")
    return tracked_text_files()


def test_no_tracked_file_points_outside_the_repository(files):
    assert len(files) > 50 and any(p.name == "README.md" for p in files)  # the listing is the repository's
    hits = []
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        for line in forbidden_references(path.read_text(errors="replace")):
            if not any(relative == allowed and snippet in line and not FORBIDDEN.search(line.replace(snippet, ""))
                       for allowed, snippet in ALLOWED):
                hits.append(f"{relative}: {line}")
    assert not hits, "references a user cannot follow:\n" + "\n".join(hits)


def test_the_check_finds_what_it_forbids():
    md, shared = ".md", "/shared"  # built here so that this file passes its own check
    for text in (f"numbers from REFERENCE{md}", f"see DESIGN{md}'s layout", f"/work{shared}/STYLE{md}",
                 f"the copy in ..{shared}/data", f"/work{shared}/data/cifar10"):
        assert forbidden_references(text) == [text]
    for text in ("docs/reports.md", "shared by every cell", "REFERENCE", "a shared/ folder", "DESIGN"):
        assert forbidden_references(text) == []
