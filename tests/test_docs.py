"""The repository stands on its own: no tracked file points outside it, every
`docs/<name>.md#<anchor>` citation names a real heading, and the Markdown links of README.md and
docs/ lead to files that exist (and headings that exist, where they name one)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FALLBACK_TOP = ("README.md", "pyproject.toml", ".ci", "app", "bench", "docs", "packaging",
                "resources", "tests")
SKIP_DIRS = {".git", "__pycache__", "build", "dist", ".venv", ".mypy_cache", ".ruff_cache"}

# Built from pieces so that this file does not contain the strings it looks for.
SHARED = "shared"
OUTSIDE = re.compile(
    r"\.\./" + SHARED + r"\b"  # the shared folder beside the checkout, by a relative path
    + r"|\b" + SHARED + r"/(?:docs|research|cases)\b"  # its background folders
    + r"|(?<![\w.~-])/" + "work" + r"/"  # an absolute path into the workspace
)
CITATION = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
FENCE = re.compile(r"^ {0,3}(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


# ---- helpers (each is tested below on planted bad input, so the checks can fail) -----------


def tracked_files() -> list[Path]:
    """Files git tracks (or, outside a git checkout, the project's own folders)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                             capture_output=True).stdout
        names = [n for n in out.decode("utf-8", "surrogateescape").split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
    if names:
        return [ROOT / n for n in names if (ROOT / n).is_file()]
    files = []
    for top in FALLBACK_TOP:
        path = ROOT / top
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*")
                      if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    return files


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text_files() -> list[tuple[Path, str]]:
    out = []
    for path in tracked_files():
        text = read_text(path)
        if text is not None:
            out.append((path, text))
    return out


def outside_paths(text: str) -> list[str]:
    """Every mention of a path outside the repository (see OUTSIDE)."""
    return [m.group(0) for m in OUTSIDE.finditer(text)]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: inline markup reduced to its text, lowercased,
    punctuation dropped except hyphens (letters, digits, underscores and spaces stay), each
    space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def without_code(markdown: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked."""
    lines, fence = [], None
    for line in markdown.splitlines():
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1) == fence:
                fence = None
            lines.append("")
            continue
        lines.append("" if fence else re.sub(r"`[^`]*`", "``", line))
    return lines


def anchors(markdown: str) -> set[str]:
    """The anchors of a Markdown file's headings, with GitHub's -1, -2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    fence = None
    for line in markdown.splitlines():
        m = FENCE.match(line)
        if m:
            fence = m.group(1) if fence is None else (None if m.group(1) == fence else fence)
            continue
        h = HEADING.match(line)
        if fence is None and h:
            slug = github_slug(h.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def bad_citations(text: str, root: Path = ROOT) -> list[str]:
    """`docs/<name>.md` and `docs/<name>.md#<anchor>` mentions whose file or heading is
    missing."""
    bad = []
    cache: dict[str, set[str] | None] = {}
    for m in CITATION.finditer(text):
        name, anchor = m.group(1), m.group(2)
        if name not in cache:
            path = root / "docs" / name
            cache[name] = anchors(path.read_text(encoding="utf-8")) if path.is_file() else None
        found = cache[name]
        if found is None or (anchor is not None and anchor not in found):
            bad.append(m.group(0))
    return bad


def markdown_links(markdown: str) -> list[str]:
    """Link targets (inline and reference-style), outside code."""
    body = "\n".join(without_code(markdown))
    return [m.group(1) for m in LINK.finditer(body)] + REF_LINK.findall(body)


def escaping_links(md_file: Path, markdown: str, root: Path = ROOT) -> list[str]:
    """Relative link targets that lead out of the repository (../ past its root)."""
    bad = []
    for target in markdown_links(markdown):
        if SCHEME.match(target) or target.startswith(("#", "/")):
            continue
        path = (md_file.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(root.resolve()):
            bad.append(target)
    return bad


def broken_links(md_file: Path, markdown: str) -> list[str]:
    """Relative link targets whose file, or heading in a Markdown file, does not exist."""
    bad = []
    for target in markdown_links(markdown):
        if SCHEME.match(target) or target.startswith("/"):
            continue
        name, _, anchor = target.partition("#")
        path = (md_file.parent / name) if name else md_file
        missing_heading = (path.is_file() and path.suffix == ".md" and bool(anchor)
                           and anchor not in anchors(path.read_text(encoding="utf-8")))
        if not path.exists() or missing_heading:
            bad.append(target)
    return bad


def project_markdown() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# ---- the repository -----------------------------------------------------------------------


def test_no_tracked_file_names_a_path_outside_the_repository():
    """No tracked text file mentions the shared background folders or a workspace path."""
    found = [f"{p.relative_to(ROOT)}: {hit}" for p, text in text_files()
             for hit in outside_paths(text)]
    assert not found, found


def test_no_markdown_link_leaves_the_repository():
    """No tracked Markdown file links above the repository root with ../."""
    found = [f"{p.relative_to(ROOT)}: {t}" for p, text in text_files() if p.suffix == ".md"
             for t in escaping_links(p, text)]
    assert not found, found


def test_every_docs_citation_resolves_to_a_heading():
    """Each docs/<name>.md#<anchor> in a tracked file names an existing file and heading."""
    files = text_files()
    assert any("docs/grok2.md#" in text for _, text in files)  # the check has work to do
    found = [f"{p.relative_to(ROOT)}: {c}" for p, text in files for c in bad_citations(text)]
    assert not found, found


@pytest.mark.parametrize("md", project_markdown(), ids=lambda p: p.name)
def test_relative_links_in_readme_and_docs_resolve(md):
    """README.md and docs/*.md link only to files (and headings) that exist."""
    assert not broken_links(md, md.read_text(encoding="utf-8"))


def test_architecture_and_model_docs_exist_and_are_linked_from_readme():
    """docs/architecture.md and docs/grok2.md exist and the README points to both."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("architecture.md", "grok2.md"):
        assert (ROOT / "docs" / name).is_file()
        assert f"](docs/{name}" in readme


# ---- the checkers catch planted faults ------------------------------------------------------


def test_slug_follows_githubs_rule():
    """Lowercase, punctuation dropped except hyphens, spaces to hyphens, repeats numbered."""
    assert github_slug("Dense MLP and the combination") == "dense-mlp-and-the-combination"
    assert github_slug("The `tokenizer.tok.json` file") == "the-tokenizertokjson-file"
    assert github_slug("Pre-tokenization regex") == "pre-tokenization-regex"
    assert github_slug("1. Grok-2 on an SGLang cluster") == "1-grok-2-on-an-sglang-cluster"
    assert github_slug("See [RoPE](x.md#rope)!") == "see-rope"
    md = "# A\n## Same\n```\n# not a heading\n```\n## Same\n"
    assert anchors(md) == {"a", "same", "same-1"}


def test_outside_path_checker_catches_planted_paths():
    """The path check flags each kind of outside path and passes ordinary text."""
    planted = ["see ../" + SHARED + "/docs/overview.md", "(" + SHARED + "/research/notes.md)",
               SHARED + "/cases/2026-11/c03.json", "cd /" + "work/main && make"]
    for text in planted:
        assert outside_paths(text), text
    assert not outside_paths("docs/grok2.md#rope, /usr/share/doc, app/store/shared.py, ../app")


def test_citation_checker_catches_planted_bad_citations():
    """A citation of a missing heading or file is flagged; a good one is not."""
    good = "see docs/grok2.md" + "#rope and docs/architecture.md" + "#threads."
    assert bad_citations(good) == []
    missing_heading = "docs/grok2.md" + "#no-such-heading"
    missing_file = "docs/" + "nope.md#rope"
    assert bad_citations(f"x ({missing_heading}) y {missing_file}.") == [missing_heading,
                                                                         missing_file]
    assert bad_citations("docs/grok2.md" + "#RoPE") == ["docs/grok2.md" + "#RoPE"]


def test_link_checkers_catch_planted_bad_links():
    """Links above the root, to missing files or to missing headings are flagged."""
    readme, d, up = ROOT / "README.md", "docs/", "../" + SHARED + "/x.md"
    text = (f"[a]({d}grok2.md#rope) [b](../../outside.md) [c]({d}missing.md) "
            f"[d]({d}grok2.md#nowhere) [e](https://example.com/x) `[f](nope.md)`\n"
            f"```\n[g](also-nope.md)\n```\n[h]: {up}\n")
    assert escaping_links(readme, text) == ["../../outside.md", up]
    assert broken_links(readme, text) == ["../../outside.md", d + "missing.md",
                                          d + "grok2.md#nowhere", up]
