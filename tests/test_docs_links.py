"""Every relative link in the documents points somewhere: README.md, BENCHMARKS.md, docs/*.md and
dashboard/README.md may link only to files that exist and, with `#anchor`, to headings that exist in them
(GitHub's anchors: lower case, punctuation dropped, spaces to hyphens). Reads text only: milliseconds."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "BENCHMARKS.md", "dashboard/README.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())  # \w keeps letters of any script, digits and _
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file (outside code blocks); repeats get -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = anchor(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(doc: Path) -> list[str]:
    """The relative links of `doc` that point at no file, or at no heading of the file they name."""
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...: not ours to check
            continue
        path_part, _, fragment = target.partition("#")
        file = (doc.parent / path_part).resolve() if path_part else doc
        if not file.exists():
            broken.append(f"{target} (no file {shown(file)})")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target} (no heading with anchor #{fragment} in {shown(file)})")
    return broken


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_relative_link_and_anchor_points_somewhere(name):
    doc = ROOT / name
    assert doc.exists(), f"{name} is missing"
    assert broken_links(doc) == [], f"{name} links nowhere"


def test_a_broken_link_and_a_broken_anchor_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Dashboard at scale: import, UMAP\n")
    doc = tmp_path / "doc.md"
    doc.write_text("# Doc\n\n## Two commands\n\n[ok](other.md#dashboard-at-scale-import-umap) [ok](#two-commands) "
                   "[web](https://example.org/x) [gone](missing.md) [bad](other.md#no-such-heading) [bad](#nope)\n"
                   "```\n[in code](ignored.md)\n```\n")
    found = broken_links(doc)
    assert len(found) == 3
    assert any(f.startswith("missing.md") for f in found)
    assert any("#no-such-heading" in f for f in found) and any(f.startswith("#nope") for f in found)
