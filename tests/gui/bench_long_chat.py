"""Measure the transcript with a 500-message conversation: open time, repaint rate while a
reply streams, the cost of one repaint, and memory (VmRSS). Not a test; run it by hand:

    QT_QPA_PLATFORM=offscreen python3 tests/gui/bench_long_chat.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["GROK_DESKTOP_HOME"] = tempfile.mkdtemp()
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import qasync
from PySide6.QtWidgets import QApplication

from app.gui.main_window import MainWindow
from app.gui.status_bar import memory_in_use
from app.messages import GenerationParams, GenerationStats
from app.settings import Settings
from app.store.store import Store
from app.worker import EngineWorker

REPLY = ("Here is how to do it:\n\n```python\ndef f(x):\n    return [i * i for i in range(x)]\n"
         "```\n\n1. **Square** each number.\n2. Collect them in a list.\n\nThat is all; "
         "the function runs in O(n) time and uses O(n) memory. " * 3)


def mb() -> float:
    return memory_in_use()[0] / 1e6


def build_conversation(store: Store, pairs: int = 250) -> int:
    conv = store.create_conversation("A long conversation")
    parent = None
    for i in range(pairs):
        user = store.add_message(conv, parent, "user", f"Question number {i}: how do I do {i}?")
        reply = store.begin_reply(conv, user, {"name": "bench"}, GenerationParams())
        store.finish_reply(reply, REPLY, "stop", GenerationStats(10, 120, 0.2, 15.0, 8.0))
        parent = reply
    return conv


async def stream_synthetic(window: MainWindow, seconds: float, tok_per_s: float) -> dict:
    """Feed the transcript like a fast engine would, and count what it repaints."""
    transcript = window.transcript
    last = transcript.views[-1]
    flush_times: list[float] = []
    original = transcript._flush

    def timed_flush() -> None:
        start = time.perf_counter()
        original()
        flush_times.append(time.perf_counter() - start)

    transcript._flush = timed_flush
    transcript._timer.timeout.disconnect()
    transcript._timer.timeout.connect(timed_flush)
    before, text, start = transcript.repaints, "", time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds:
        n += 1
        text += f"word{n} " + ("\n\n" if n % 40 == 0 else "")
        transcript.stream_text(last.id, text)
        await asyncio.sleep(1 / tok_per_s)
    await asyncio.sleep(0.1)
    elapsed = time.perf_counter() - start
    count = transcript.repaints - before
    return {"tokens": n, "repaints_per_s": count / elapsed,
            "mean_repaint_ms": 1000 * sum(flush_times) / max(1, len(flush_times)),
            "max_repaint_ms": 1000 * max(flush_times, default=0)}


async def scroll_to_top(transcript) -> float:
    """Scroll up like a user, to the first message; returns ms per page built."""
    bar, times = transcript.verticalScrollBar(), []
    while transcript._first > 0:
        first, start = transcript._first, time.perf_counter()
        bar.setValue(min(bar.maximum(), 200))  # from a little below the top, as a wheel would
        await asyncio.sleep(0.01)
        bar.setValue(0)
        while transcript._first == first:
            await asyncio.sleep(0.005)
        times.append(time.perf_counter() - start)
        await asyncio.sleep(0.05)
    return 1000 * sum(times) / max(1, len(times))


async def stream_real(window: MainWindow) -> dict:
    """A real reply from the demo engine in a new chat: repaints per second while streaming."""
    window.new_chat()
    await window.chat.send("warm up")  # the first generation pays one-time set-up costs
    window.new_chat()
    before = window.transcript.repaints
    start = time.perf_counter()
    await window.chat.send("Tell me something long")  # max_tokens from the settings
    elapsed = time.perf_counter() - start
    reply = window.transcript.last_reply()
    return {"seconds": elapsed, "chars": len(reply.text), "speed": window.status.speed.text(),
            "repaints_per_s": (window.transcript.repaints - before) / elapsed}


async def main() -> None:
    store = Store.open()
    conv = build_conversation(store)
    settings = Settings(welcome_done=True, sampling=GenerationParams(max_tokens=1500, seed=0))
    window = MainWindow(store, EngineWorker(), settings)
    window.resize(1280, 800)
    window.show()
    window.load_demo()
    while window.worker.info is None or window.loader.loading:
        await asyncio.sleep(0.05)
    base = mb()
    start = time.perf_counter()
    window.open_conversation(conv)
    QApplication.processEvents()
    open_ms = 1000 * (time.perf_counter() - start)
    opened = mb()
    widgets_at_open = len(window.transcript.widgets)
    synthetic = await stream_synthetic(window, 4.0, 200)
    transcript = window.transcript
    for _ in range(2):  # the most pages that ever exist at once
        transcript.build_earlier()
        QApplication.processEvents()
    built_pages = len(transcript._pages)
    synthetic_full = await stream_synthetic(window, 4.0, 200)
    page_ms = await scroll_to_top(transcript)
    scrolled = mb()
    real = await stream_real(window)
    print(f"open 500 messages: {open_ms:.0f} ms, {widgets_at_open} widgets built; "
          f"memory {base:.0f} MB -> {opened:.0f} MB")
    print(f"streaming at 200 tok/s, newest page built: {synthetic}")
    print(f"streaming at 200 tok/s, {built_pages} pages built: {synthetic_full}")
    print(f"scrolling to the top: {page_ms:.0f} ms per page of 40; memory {scrolled:.0f} MB")
    print(f"real demo engine reply in a new chat: {real}")
    window.close()
    store.close()


if __name__ == "__main__":
    app = QApplication.instance() or QApplication([])
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    with loop:
        loop.run_until_complete(main())
