"""The README is a front door (issue 26): short, with the commands CI runs, and every relative
link in it and in docs/*.md points to a file (and heading) that exists. No compute."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); targets with a scheme or a bare #anchor handled below.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _text_outside_code(path: pathlib.Path) -> str:
    """The page without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: pathlib.Path) -> set:
    """GitHub's anchors of the page's headings (lower case, punctuation dropped, spaces to -)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    anchors, seen = set(), {}
    for title in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, flags=re.M):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_has_the_test_command_ci_runs():
    text = README.read_text(encoding="utf-8")
    assert "python -m pytest -q tests" in text
    assert "python -m pytest -q tests" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in LINK.findall(_text_outside_code(page)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    text = _text_outside_code(README)
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in LINK.findall(text)}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"
