"""The engine thread: requests in, events out on the asyncio loop, stop, failures, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.errors import ModelFileError
from app.messages import (
    Failed,
    Finished,
    GenerationParams,
    GenerationStats,
    Loaded,
    ModelInfo,
    Progress,
    Token,
)
from app.worker import EngineWorker, Generate, LoadModel, Unload, Unloaded, describe_failure


@pytest.fixture(autouse=True)
def _endless_demo(random_demo):
    """Worker tests stop and cancel long replies: use the untrained demo (tests/conftest.py)."""

INFO = ModelInfo("fake", "/nowhere", "0" * 16, "float32", "cpu", 256, is_demo=True)


class FakeEngine:
    """Yields `n` tokens; honours `cancel` between steps like the real engine."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None, n: int = 5) -> None:
        self.info = INFO
        self.delay, self.fail_at, self.n = delay, fail_at, n
        self.unloaded = False
        self.thread_names: list[str] = []
        self.inference_mode: list[bool] = []

    def count_tokens(self, messages):
        return sum(len(m["content"].split()) for m in messages)

    def stream_chat(self, messages, params, cancel=None, continue_text=None):
        import torch

        self.thread_names.append(threading.current_thread().name)
        self.inference_mode.append(torch.is_inference_mode_enabled())
        for i in range(self.n):
            if cancel is not None and cancel.is_set():
                yield Finished("cancelled", GenerationStats(completion_tokens=i))
                return
            if i == self.fail_at:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            time.sleep(self.delay)
            yield Token(f"w{i} ", (i,))
        yield Finished("length", GenerationStats(completion_tokens=self.n))

    def unload(self):
        self.unloaded = True


def make_worker(engine: FakeEngine, progress_steps: int = 3) -> EngineWorker:
    def loader(request, progress):
        if request.folder == "bad":
            raise ModelFileError("bad/config.json: missing; it comes with the weights")
        for i in range(progress_steps):
            progress(Progress("loading weights", i + 1, progress_steps))
            time.sleep(0.01)
        return engine

    return EngineWorker(loader)


async def collect(worker, request):
    return [event async for event in worker.stream(request)]


def run(coro, timeout: float = 10.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_load_then_generate_streams_tokens_in_order():
    """A load reports progress then Loaded; a generation streams tokens then one Finished."""
    engine = FakeEngine()
    worker = make_worker(engine)

    async def scenario():
        loaded = await collect(worker, LoadModel(demo=True))
        reply = await collect(worker, Generate(({"role": "user", "content": "hi"},)))
        return loaded, reply

    loaded, reply = run(scenario())
    assert [type(e) for e in loaded] == [Progress, Progress, Progress, Loaded]
    assert loaded[1].eta_s is not None and loaded[1].eta_s >= 0
    assert "".join(e.text for e in reply[:-1]) == "w0 w1 w2 w3 w4 "
    assert reply[-1] == Finished("length", GenerationStats(completion_tokens=5))
    assert worker.info == INFO and worker.count_tokens([{"role": "user", "content": "a b"}]) == 2
    assert engine.thread_names == ["engine"] and engine.inference_mode == [True]
    assert worker.shutdown() and engine.unloaded


def test_stop_takes_effect_at_next_step():
    """stop() set from the loop's thread ends the reply early with reason 'cancelled'."""
    worker = make_worker(FakeEngine(delay=0.05, n=200))

    async def scenario():
        await collect(worker, LoadModel(demo=True))
        events = []
        async for event in worker.stream(Generate(({"role": "user", "content": "hi"},))):
            events.append(event)
            if len(events) == 2:
                worker.stop()
        return events

    events = run(scenario())
    assert events[-1].reason == "cancelled"
    assert len(events) < 10
    worker.shutdown()


def test_failure_becomes_one_failed_event_and_worker_survives():
    """An exception mid-generation is one Failed event; the next request still works."""
    engine = FakeEngine(fail_at=2)
    worker = make_worker(engine)

    async def scenario():
        await collect(worker, LoadModel(demo=True))
        first = await collect(worker, Generate(({"role": "user", "content": "hi"},)))
        engine.fail_at = None
        second = await collect(worker, Generate(({"role": "user", "content": "hi"},)))
        return first, second

    first, second = run(scenario())
    assert [type(e) for e in first] == [Token, Token, Failed]
    assert first[-1].error.startswith("Out of GPU memory")
    assert "Traceback" in first[-1].detail
    assert second[-1].reason == "length"
    worker.shutdown()


def test_bad_model_folder_fails_with_the_user_message():
    """A ModelFileError while loading reaches the GUI as its own one-line message."""
    worker = make_worker(FakeEngine())
    events = run(collect(worker, LoadModel(folder="bad")))
    assert events == [Failed("bad/config.json: missing; it comes with the weights", events[0].detail)]
    assert worker.info is None
    worker.shutdown()


def test_generate_without_model_fails_clearly():
    """Generating before a load is a Failed event telling the user what to do."""
    worker = make_worker(FakeEngine())
    events = run(collect(worker, Generate(({"role": "user", "content": "hi"},))))
    assert len(events) == 1 and "No model is loaded" in events[0].error
    worker.shutdown()


def test_load_can_be_cancelled():
    """Cancelling a load ends it with Finished('cancelled') and leaves no model."""
    worker = make_worker(FakeEngine(), progress_steps=50)

    async def scenario():
        events = []
        stream = worker.stream(LoadModel(demo=True))
        async for event in stream:
            events.append(event)
            if isinstance(event, Progress):
                stream.cancel()
        return events

    events = run(scenario())
    assert events[-1] == Finished("cancelled")
    assert worker.info is None
    worker.shutdown()


def test_closed_stream_drops_stale_events():
    """After close(), the old request's remaining events never reach anyone."""
    worker = make_worker(FakeEngine(delay=0.02, n=100))

    async def scenario():
        await collect(worker, LoadModel(demo=True))
        old = worker.stream(Generate(({"role": "user", "content": "old"},)))
        async for _ in old:
            break
        old.close()
        queued_at_close = old._events.qsize()
        new = await collect(worker, Generate(({"role": "user", "content": "new"},)))
        return old, queued_at_close, new

    old, queued_at_close, new = run(scenario())
    assert old._events.qsize() == queued_at_close  # nothing more was delivered after close
    assert new[-1].reason == "length" and len(new) == 101
    assert worker._listeners == {}
    worker.shutdown()


def test_unload_releases_the_engine():
    """Unload answers Unloaded and the engine's unload() ran."""
    engine = FakeEngine()
    worker = make_worker(engine)

    async def scenario():
        await collect(worker, LoadModel(demo=True))
        return await collect(worker, Unload())

    assert run(scenario()) == [Unloaded()]
    assert engine.unloaded and worker.info is None
    worker.shutdown()


def test_shutdown_during_generation_is_quick():
    """Shutting down mid-reply returns within the 2 s budget."""
    worker = make_worker(FakeEngine(delay=0.05, n=10_000))

    async def scenario():
        await collect(worker, LoadModel(demo=True))
        stream = worker.stream(Generate(({"role": "user", "content": "hi"},)))
        await stream.__anext__()
        start = time.monotonic()
        ok = worker.shutdown(timeout=2.0)
        return ok, time.monotonic() - start

    ok, elapsed = run(scenario())
    assert ok and elapsed < 2.0


@pytest.mark.parametrize(
    ("exc", "start"),
    [(MemoryError(), "Out of system memory"), (ValueError("boom"), "The engine failed: ValueError")],
)
def test_describe_failure_gives_one_line(exc, start):
    """Non-user exceptions get a short actionable line and the traceback as detail."""
    failed = describe_failure(exc)
    assert failed.error.startswith(start) and "\n" not in failed.error


def test_params_travel_unchanged():
    """The generation request carries the user's sampling settings to the engine."""
    seen = {}

    class Spy(FakeEngine):
        def stream_chat(self, messages, params, cancel=None, continue_text=None):
            seen.update(params=params, continue_text=continue_text, messages=messages)
            yield Finished("stop")

    worker = make_worker(Spy())
    params = GenerationParams(temperature=0.0, max_tokens=7, seed=3)

    async def scenario():
        await collect(worker, LoadModel(demo=True))
        msgs = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "par"})
        return await collect(worker, Generate(msgs, params, continue_text="par"))

    assert run(scenario()) == [Finished("stop")]
    assert seen["params"] == params and seen["continue_text"] == "par"
    worker.shutdown()


def test_real_demo_engine_streams_and_stops(tmp_path, monkeypatch):
    """The default loader builds the real tiny demo engine; it streams and honours stop."""
    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path))
    worker = EngineWorker()
    messages = ({"role": "user", "content": "Hello"},)

    async def scenario():
        loaded = await collect(worker, LoadModel(demo=True))
        full = await collect(worker, Generate(messages, GenerationParams(max_tokens=8, seed=1)))
        stopped = []
        # seeded: unseeded, the demo model ends its reply within 12 tokens for 31 of 200 seeds,
        # and the stop may then arrive after a natural end (seed 1 runs 56 tokens)
        async for event in worker.stream(Generate(messages, GenerationParams(max_tokens=4000,
                                                                             seed=1))):
            stopped.append(event)
            if len(stopped) == 3:
                worker.stop()
        return loaded, full, stopped

    loaded, full, stopped = run(scenario(), timeout=60)
    assert isinstance(loaded[-1], Loaded) and loaded[-1].info.is_demo
    assert full[-1].reason == "length" and full[-1].stats.completion_tokens == 8
    assert all(isinstance(e, Token) for e in full[:-1])
    assert stopped[-1].reason == "cancelled" and stopped[-1].stats.completion_tokens < 4000
    assert worker.shutdown()


def test_remote_disconnect_is_a_continuable_failure():
    """A remote reply cut short arrives as one Failed with continuable=True; others are not."""
    from app.backends import RemoteDisconnected, RemoteError

    cut = describe_failure(RemoteDisconnected("the connection dropped mid-reply",
                                              GenerationStats(completion_tokens=3)))
    assert cut.continuable and cut.error == "the connection dropped mid-reply"
    assert not describe_failure(RemoteError("refused", "refused")).continuable
    assert not describe_failure(ValueError("boom")).continuable


def test_api_server_needs_a_local_model():
    """Without a model, or with an engine that cannot serve (remote), the switch says why."""
    from app.errors import UserError

    worker = make_worker(FakeEngine())
    with pytest.raises(UserError, match="needs a loaded model"):
        worker.start_api_server(0)
    run(collect(worker, LoadModel(demo=True)))
    with pytest.raises(UserError, match="remote server"):
        worker.start_api_server(0)  # FakeEngine has no stream_ids, like RemoteBackend
    assert worker.api_server_url is None
    worker.stop_api_server()  # off already: nothing to do
    worker.shutdown()


def test_remote_load_request_uses_connect(monkeypatch):
    """LoadModel(remote=...) goes through app.backends.connect, not the local engine."""
    from app import backends
    from app.backends import RemoteConfig
    from app.worker import default_loader

    seen = []
    monkeypatch.setattr(backends, "connect", lambda config: seen.append(config) or FakeEngine())
    config = RemoteConfig("http://127.0.0.1:9", model="m")
    progress = []
    engine = default_loader(LoadModel(remote=config), progress.append)
    assert seen == [config] and engine.info == INFO
    assert progress and "127.0.0.1:9" in progress[0].stage


class InvalidBytesEngine(FakeEngine):
    def stream_chat(self, messages, params, cancel=None, continue_text=None):
        self.seen = list(messages)
        yield Token("ab\ufffdc", (1,))
        yield Token("\ufffd", (2,))
        yield Finished("stop", GenerationStats(completion_tokens=2))


def test_invalid_utf8_from_the_model_shows_nothing():
    """U+FFFD (bytes the decoder could not turn into text) never reaches the chat."""
    worker = make_worker(InvalidBytesEngine())

    async def scenario():
        await collect(worker, LoadModel(demo=True))
        return await collect(worker, Generate(({"role": "user", "content": "hi"},)))

    events = run(scenario())
    assert "".join(e.text for e in events if isinstance(e, Token)) == "abc"
    worker.shutdown()


def test_context_policy_is_applied_in_the_engine_thread():
    """A conversation longer than the context (256 fake tokens) is cut by the rolling window,
    or refused in one line by "stop"."""
    engine = InvalidBytesEngine()
    worker = make_worker(engine)
    long = tuple({"role": "user" if i % 2 == 0 else "assistant", "content": "w " * 40}
                 for i in range(11))
    params = GenerationParams(max_tokens=16)

    async def scenario():
        await collect(worker, LoadModel(demo=True))
        rolled = await collect(worker, Generate(long, params, context_policy="rolling"))
        stopped = await collect(worker, Generate(long, params, context_policy="stop"))
        return rolled, stopped

    rolled, stopped = run(scenario())
    assert isinstance(rolled[-1], Finished)
    assert engine.seen[-1] == long[-1] and 0 < len(engine.seen) < len(long)
    assert engine.count_tokens(engine.seen) + 16 <= 256
    assert isinstance(stopped[-1], Failed) and "reached the model's context" in stopped[-1].error
    worker.shutdown()


def test_a_failure_in_the_worker_lands_in_the_log_file(tmp_path, monkeypatch):
    """The rotating log file gets the worker's failure with its traceback."""
    import logging

    from app.logs import setup_logging

    monkeypatch.setenv("GROK_DESKTOP_HOME", str(tmp_path))
    root = logging.getLogger()
    before = list(root.handlers)
    path = setup_logging()
    try:
        worker = make_worker(FakeEngine(fail_at=1))

        async def scenario():
            await collect(worker, LoadModel(demo=True))
            return await collect(worker, Generate(({"role": "user", "content": "hi"},)))

        events = run(scenario())
        assert isinstance(events[-1], Failed)
        worker.shutdown()
        for handler in root.handlers:
            handler.flush()
        text = path.read_text(encoding="utf-8")
        assert "Generate failed" in text and "CUDA out of memory" in text
        assert "Traceback" in text and path == tmp_path / "logs" / "grok-desktop.log"
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
                handler.close()
        for name in ("uvicorn", "uvicorn.error", "py.warnings"):
            for handler in logging.getLogger(name).handlers[:]:
                if getattr(handler, "grok_desktop", False):
                    logging.getLogger(name).removeHandler(handler)
