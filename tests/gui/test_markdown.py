"""Splitting replies into prose and code blocks, and code highlighting."""

from __future__ import annotations

from app.gui.markdown import Code, Prose, highlight_html, split_segments

COLORS = {"keyword": "#k", "string": "#s", "comment": "#c", "number": "#n", "function": "#f"}


def test_prose_and_fenced_code_are_separated():
    """Fences become Code segments with their language; text around them stays prose."""
    text = "Intro **bold**\n\n```python\nx = 1\n```\nAfter\n~~~\nplain\n~~~"
    assert split_segments(text) == [
        Prose("Intro **bold**"), Code("x = 1", "python"), Prose("After"), Code("plain", ""),
    ]


def test_unclosed_fence_while_streaming():
    """A fence that is not closed yet runs to the end and is marked open."""
    assert split_segments("See:\n```js\nlet a = 1;\nlet b") == [
        Prose("See:"), Code("let a = 1;\nlet b", "js", closed=False)]


def test_longer_fence_contains_shorter_one():
    """A ```` fence only closes on ```` or longer, so ``` lines inside are code."""
    text = "````md\n```\ninner\n```\n````"
    assert split_segments(text) == [Code("```\ninner\n```", "md")]


def test_highlight_escapes_html_and_colours_tokens():
    """Code is HTML-escaped; keywords, strings, comments, numbers and calls get colours."""
    html = highlight_html('def f(x):\n    return "<b>" + 2  # done', "py", COLORS)
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert '<span style="color:#k">def</span>' in html
    assert '<span style="color:#f">f</span>' in html
    assert '<span style="color:#c"># done</span>' in html
    assert '<span style="color:#n">2</span>' in html
    assert 'white-space:pre-wrap' in html


def test_highlight_unknown_language_is_safe():
    """No language: no keyword colours, still escaped."""
    html = highlight_html("if a < b: pass", "", COLORS)
    assert "#k" not in html and "&lt;" in html
