"""The conversation list: order, pin, rename, search, delete to trash with undo, restore."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from app.gui.sidebar import SNIPPET_ROLE, Sidebar

from .conftest import wait


@pytest.fixture
def sidebar(qtbot, store):
    ids = []
    for age, (title, text) in enumerate([("Kyoto trip", "temples and gardens"),
                                         ("SQL help", "window functions"),
                                         ("Poem", "a sonnet about rain")]):
        conv = store.create_conversation(title)
        store.add_message(conv, None, "user", text)
        with store.transaction() as conn:  # distinct times: creation can share a millisecond
            conn.execute("UPDATE conversations SET updated_ms = ? WHERE id = ?",
                         (1_700_000_000_000 + age * 1000, conv))
        ids.append(conv)
    widget = Sidebar(store)
    qtbot.addWidget(widget)
    widget.test_ids = ids
    return widget


def test_newest_first_and_pinned_on_top(sidebar):
    """The newest conversation is first; a pinned one moves above all others."""
    kyoto, sql, poem = sidebar.test_ids
    assert sidebar.ids() == [poem, sql, kyoto]
    sidebar.set_pinned(kyoto, True)
    assert sidebar.ids() == [kyoto, poem, sql]
    assert sidebar.list.item(0).text() == "Pinned"


def test_search_finds_titles_and_message_text(qtbot, sidebar):
    """Typing in the search box lists title matches and message-content matches."""
    _kyoto, sql, poem = sidebar.test_ids
    qtbot.keyClicks(sidebar.search, "sql")
    wait(qtbot, lambda: sidebar.ids() == [sql], timeout=3000)
    sidebar.search.clear()
    qtbot.keyClicks(sidebar.search, "rain")
    wait(qtbot, lambda: sidebar.ids() == [poem], timeout=3000)
    item = sidebar.item_for(poem)
    assert "rain" in item.toolTip() and "[" not in item.text()
    assert '">rain</b>' in item.data(SNIPPET_ROLE)  # the match is bold and coloured
    sidebar.search.clear()
    wait(qtbot, lambda: len(sidebar.ids()) == 3, timeout=3000)


def test_delete_goes_to_trash_and_undo_restores(qtbot, sidebar):
    """Delete moves to the trash with an Undo notice; Undo puts it back."""
    kyoto, sql, poem = sidebar.test_ids
    removed = []
    sidebar.conversation_removed.connect(removed.append)
    sidebar.list.setCurrentItem(sidebar.item_for(sql))
    sidebar.list.setFocus()
    qtbot.keyClick(sidebar.list, Qt.Key.Key_Delete)
    assert removed == [sql] and sql not in sidebar.ids()
    assert sidebar.undo_bar.isVisibleTo(sidebar)
    assert [c.id for c in sidebar.store.list_trash()] == [sql]
    qtbot.mouseClick(sidebar.undo_button, Qt.MouseButton.LeftButton)
    assert sidebar.ids() == [poem, sql, kyoto]
    assert sidebar.store.list_trash() == [] and not sidebar.undo_bar.isVisibleTo(sidebar)


def test_trash_view_restores_and_empties(sidebar):
    """The trash view lists deleted chats; restore brings one back, empty removes the rest."""
    kyoto, sql, poem = sidebar.test_ids
    sidebar.delete([kyoto, poem])
    sidebar.set_trash_mode(True)
    assert sorted(sidebar.ids()) == sorted([kyoto, poem])
    sidebar.restore([kyoto])
    assert sidebar.ids() == [poem]
    sidebar.empty_trash()
    assert sidebar.ids() == []
    sidebar.set_trash_mode(False)
    assert sidebar.ids() == [sql, kyoto] or sidebar.ids() == [kyoto, sql]
    assert poem not in sidebar.store.all_conversation_ids(include_trash=True)


def test_rename_in_place(sidebar):
    """Editing an item's text renames the stored conversation."""
    kyoto = sidebar.test_ids[0]
    sidebar.item_for(kyoto).setText("Kyoto, 3 days")
    assert sidebar.store.get_conversation(kyoto).title == "Kyoto, 3 days"


def test_selection_opens_and_export_is_requested(qtbot, sidebar):
    """Clicking opens a conversation; the selection is what Export receives."""
    kyoto, sql, _ = sidebar.test_ids
    opened = []
    sidebar.conversation_selected.connect(opened.append)
    rect = sidebar.list.visualItemRect(sidebar.item_for(sql))
    qtbot.mouseClick(sidebar.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert opened == [sql]
    sidebar.item_for(kyoto).setSelected(True)
    assert sorted(sidebar.selected_ids()) == sorted([kyoto, sql])


def test_search_snippet_is_rich_text_with_the_match_highlighted(qtbot):
    """The snippet marks each match in bold colour, escapes the text, and paints taller rows."""
    from app.gui.sidebar import snippet_html
    from app.store.rows import SearchHit

    hit = SearchHit(1, "<T>", 2, "我们讨论世界和平的问题 <b>", ((4, 8),))
    markup = snippet_html(hit, "#123456", "#777777")
    assert '<b style="color:#123456">世界和平</b>' in markup
    assert "&lt;T&gt;" in markup and "&lt;b&gt;" in markup and "[" not in markup
