"""Splitting replies into prose and code blocks, and their Qt rich text."""

from __future__ import annotations

from app.gui.markdown import Code, Prose, code_html, prose_html, split_segments


def test_prose_and_fenced_code_are_separated():
    """Top-level fences become Code segments with their language; text around stays prose."""
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


def test_fence_under_a_list_item_is_code_with_a_copy_link():
    """CommonMark: a fence indented under a list item is a code block of that item."""
    text = "1. Install:\n\n    ```bash\n    pip install foo\n    ```\n\n2. Run it."
    assert split_segments(text) == [Prose(text)]
    code: list[str] = []
    html = prose_html(text, code_out=code)
    assert code == ["pip install foo"]
    assert '<a href="copy:0">Copy</a>' in html and "<pre" in html and "<code>" not in html


def test_code_html_escapes_and_colours_with_pygments():
    """Code is HTML-escaped and coloured with style attributes (Qt has no stylesheet here)."""
    html = code_html('def f(x):\n    return "<b>" + 2  # done', "py")
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert '<span style="color: #008000; font-weight: bold">def</span>' in html
    assert "white-space:pre-wrap" in html
    dark = code_html("def f(): pass", "py", dark=True)
    assert dark != code_html("def f(): pass", "py")


def test_unknown_language_is_only_escaped():
    html = code_html("if a < b: pass", "")
    assert "<span" not in html and "&lt;" in html


def test_prose_renders_markdown_not_source():
    """Headings, tables, task lists, strike, quotes and math become rich text, not source."""
    text = ("## Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- [x] done\n- [ ] todo\n\n"
            "~~old~~ > no\n\n> quoted\n\nEnergy $E = mc^2$ and\n\n$$\n\\int x\\,dx\n$$")
    html = prose_html(text)
    assert "<h2>Title</h2>" in html and "<table" in html and "|---|" not in html
    assert "☑" in html and "☐" in html and "<s>old</s>" in html and "<blockquote" in html
    assert html.count('<img src="data:image/svg+xml;base64,') == 2 and "$" not in html
    assert 'alt="\\int x\\,dx"' in html  # the backslashes of display math survive


def test_raw_html_and_unsafe_links_are_text():
    html = prose_html('<img src=x onerror="alert(1)"> [a](javascript:alert(1)) [b](https://x.y)')
    assert "<img src=x" not in html and "&lt;img" in html
    assert 'href="javascript' not in html and '<a href="https://x.y">b</a>' in html


def test_long_words_get_break_chances_only_for_display():
    word = "x" * 300
    html = prose_html(word)
    assert "\u200b" in html and html.replace("\u200b", "").count(word) == 1
    assert max(len(part) for part in html.split("\u200b")) < 40
