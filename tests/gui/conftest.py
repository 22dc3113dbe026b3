"""GUI test fixtures: offscreen Qt, a qasync loop that counts as running while pytest-qt pumps
Qt events, a private GROK_DESKTOP_HOME per test, and main windows on the real engine thread.

Async GUI code runs on the qasync loop; tests drive it with `qtbot.waitUntil(condition)`,
which processes Qt events (and so the loop's callbacks) until the condition holds.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
import qasync

from app.settings import Settings

WAIT_MS = 20_000


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def session_loop(qapp) -> Iterator[asyncio.AbstractEventLoop]:
    """One qasync loop for the session, created "already running" (qasync's mode for a loop
    inside a Qt event loop): Qt event processing, as in qtbot.waitUntil, runs its callbacks."""
    event_loop = qasync.QEventLoop(qapp, already_running=True)
    asyncio._set_running_loop(None)  # only GUI tests see it running (see `loop`)
    yield event_loop
    asyncio._set_running_loop(event_loop)  # stop() and close() expect the running state
    event_loop.stop()
    event_loop.close()
    asyncio._set_running_loop(None)


@pytest.fixture
def loop(session_loop, qapp) -> Iterator[asyncio.AbstractEventLoop]:
    """The session loop, running for this test only; tasks left behind are cancelled after."""
    asyncio._set_running_loop(session_loop)
    asyncio.set_event_loop(session_loop)
    yield session_loop
    for task in asyncio.all_tasks(session_loop):
        task.cancel()
    qapp.processEvents()
    asyncio._set_running_loop(None)
    asyncio.set_event_loop(None)


@pytest.fixture
def store(home):
    from app.store.store import Store

    with Store.open() as opened:
        yield opened


@pytest.fixture
def make_window(home, loop, qtbot) -> Iterator[Callable[..., object]]:
    """Build a MainWindow on a real EngineWorker; every window is closed at teardown."""
    from app.gui.main_window import MainWindow
    from app.store.store import Store
    from app.worker import EngineWorker

    made = []

    def build(settings: Settings | None = None, worker: EngineWorker | None = None,
              resize: bool = True):
        store = Store.open()
        window = MainWindow(store, worker or EngineWorker(), settings or Settings(
            welcome_done=True))
        qtbot.addWidget(window)
        if resize:
            window.resize(1280, 800)
        window.show()
        made.append((window, store))
        return window

    yield build
    for window, store in made:
        window.close()
        store.close()


def wait(qtbot, condition: Callable[[], object], timeout: int = WAIT_MS) -> None:
    qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)


def load_demo(qtbot, window) -> None:
    """Load the real tiny demo model through the window and wait until it is ready."""
    window.load_demo()
    wait(qtbot, lambda: window.worker.info is not None and not window.loader.loading)
    assert window.composer.unavailable_reason is None


@pytest.fixture(autouse=True)
def _endless_demo(random_demo):
    """GUI tests stream long replies: use the untrained demo (see tests/conftest.py)."""
