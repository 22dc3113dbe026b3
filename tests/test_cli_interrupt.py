"""Ctrl-C in a command: one line, exit 130; a download or prepare says how to resume."""

from __future__ import annotations

import pytest

from app import cli


def _interrupt(_args) -> int:
    raise KeyboardInterrupt


@pytest.mark.parametrize("argv,resume", [
    (["download", "--out", "x"], True),
    (["prepare", "--model", "x"], True),
    (["list"], False),
])
def test_ctrl_c_is_one_line(argv, resume, monkeypatch, capsys):
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    args.func = _interrupt
    monkeypatch.setattr(cli, "build_parser", lambda: type(
        "P", (), {"parse_args": staticmethod(lambda _argv: args)})())
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err.startswith("grok-desktop: interrupted") and err.count("\n") == 1
    assert ("run the same command again to resume" in err) == resume
