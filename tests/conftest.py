"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_app_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No test writes the user's own settings, data or caches: the whole session runs with
    GROK_DESKTOP_HOME in a temporary folder (app.paths puts everything under it). Suites set
    their own per test; this one stays underneath, so a test that calls monkeypatch.undo()
    (which also undoes its fixtures' patches) still lands here, not in ~/.config."""
    home = tmp_path_factory.mktemp("app-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GROK_DESKTOP_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def random_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Engine.demo() loads an untrained tiny checkpoint instead of the bundled trained demo.

    The bundled demo has learned to end its turns, so its replies are short; tests of
    streaming, stopping and closing mid-reply need a model that goes on until max_tokens."""
    from app.engine import tiny

    folder = tiny.write_tiny_checkpoint(tmp_path_factory.mktemp("demo") / "random", seed=1234,
                                        n_merges=1000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiny, "ensure_demo_checkpoint", lambda: folder)
        yield folder


@pytest.fixture
def start():
    """start(engine, **ApiServer kwargs) -> a started ApiServer on a free loopback port; every
    server started is stopped after the test (tests/test_server.py, tests/test_api_guard.py)."""
    from app.api.server import ApiServer

    servers: list[ApiServer] = []

    def make(engine, **kw):
        server = ApiServer(engine, **{"port": 0, **kw})
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
