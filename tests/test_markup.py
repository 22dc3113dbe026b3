"""The shared Markdown pipeline (app/exchange/markup.py): parsing, safety, math, code."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from app.exchange.markup import blocks, close_open_fences, code_blocks, math_image, to_html

CASES = Path(__file__).parent / "data" / "cases"


def _replies(name: str) -> list[str]:
    doc = json.loads((CASES / name).read_text(encoding="utf-8"))
    return [m["content"] for m in doc["conversations"][0]["messages"] if m["role"] == "assistant"]


def test_c12_fences_follow_commonmark():
    """Nested and tilde fences stay whole; a fence under a list item is a bash block."""
    replies = _replies("c12_fences.json")
    assert code_blocks(replies[0]) == code_blocks(replies[0])[:1]
    assert code_blocks(replies[0])[0].code.startswith("# Demo\n\n```python\nprint('hi')\n```")
    assert [(b.code, b.language) for b in code_blocks(replies[1])] == [
        ("code with ``` inside", "")]
    assert [(b.code, b.language) for b in code_blocks(replies[2])] == [
        ("pip install foo", "bash")]
    page = to_html(replies[2])
    assert '<code class="language-bash">pip<span class="w"> </span>install' in page
    assert "<ol>" in page and "```" not in page


def test_markdown_constructs_render():
    html = to_html("## Head\n\n*it* **bold** ~~gone~~ [l](https://e.org)\n\n"
                   "| a | b |\n|---|---|\n| 1 | 2 |\n\n- [x] done\n\n> quote")
    for piece in ("<h2>Head</h2>", "<em>it</em>", "<strong>bold</strong>", "<s>gone</s>",
                  '<a href="https://e.org">l</a>', "<table>", "<td>1</td>",
                  'type="checkbox"', "<blockquote>"):
        assert piece in html


def test_math_in_every_notation_and_never_in_code():
    for source in ("$E=mc^2$", "$$x^2$$", "\\(x^2\\)", "\\[x^2\\]", "$$\n\\int x\\,dx\n$$"):
        html = to_html(source)
        assert "<svg" in html and "$" not in html and "\\(" not in html, source
    html = to_html("`$x$` and\n\n```\n$$y$$\n```")
    assert "<svg" not in html and "$x$" in html and "$$y$$" in html


def test_currency_stays_text_and_bad_math_shows_its_source():
    assert to_html("costs $5 and $10 today") == "<p>costs $5 and $10 today</p>\n"
    assert "<svg" not in to_html("$\\frac{$") and "$\\frac{$" in to_html("$\\frac{$")
    assert math_image("\\frac{", False) is None


def test_links_only_http_https_mailto_and_raw_html_is_text():
    html = to_html("<script>x()</script> [a](javascript:x()) [b](file:///etc/passwd) "
                   "[c](mailto:a@b.c) ![p](https://t.example/p.png)")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "javascript:" not in html.replace("[a](javascript:x())", "")
    assert 'href="file' not in html and 'href="mailto:a@b.c"' in html
    assert "<img" not in html  # images become links: rendering never fetches anything


def test_unclosed_fence_is_marked_and_closed():
    assert blocks("a\n```py\nx")[-1].closed is False
    assert close_open_fences("a\n```py\nx") == "a\n```py\nx\n```\n"


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab $\\`~*_-|[]()<>!#>\n\t1x{}^")), max_size=80))
def test_any_text_renders_safely(text):
    """No input raises; raw HTML never survives; the top-level code blocks are those found
    at any depth minus the nested ones; closing fences leaves nothing open."""
    for target in ("browser", "qt"):
        html = to_html(text, target=target)
        assert "<script" not in html and "<x" not in html
    top = [b for b in blocks(text) if not hasattr(b, "text")]
    assert len(top) <= len(code_blocks(text))
    assert all(b.closed for b in code_blocks(close_open_fences(text)))
