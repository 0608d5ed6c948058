"""Every relative link in README.md and docs/*.md points at a file (and heading) that exists."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def broken_links(files) -> list[str]:
    bad = []
    for f in files:
        text = re.sub(r"```.*?```", "", f.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, frag = target.partition("#")
            p = (f.parent / path) if path else f
            if not p.exists():
                bad.append(f"{f.name}: {target} (no such file)")
            elif frag and p.suffix == ".md" and frag not in _anchors(p):
                bad.append(f"{f.name}: {target} (no such heading)")
    return bad


def test_relative_links_resolve():
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert broken_links(files) == []


def test_a_broken_link_is_reported(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("# Title\n[ok](x.md#title) [gone](nowhere.md) [bad](x.md#missing)\n")
    assert len(broken_links([md])) == 2
