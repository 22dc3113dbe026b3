"""The check made before Qt starts on Linux/X11: a missing xcb library is one line naming the
packages and the apt command, exit status 2, instead of Qt's abort."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from app import cli
from app.errors import UserError
from app.gui import xcb_check

ROOT = Path(__file__).resolve().parents[1]
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the check is Linux-only")


def loader(missing: set[str], calls: list[str] | None = None):
    """A stand-in for the dynamic linker: the sonames in `missing` fail to load."""
    def load(soname: str) -> None:
        if calls is not None:
            calls.append(soname)
        if soname in missing:
            raise OSError(f"{soname}: cannot open shared object file: No such file or directory")
    return load


@pytest.fixture
def x11_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Linux X11 session where apt exists and QT_QPA_PLATFORM is not set."""
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(xcb_check.shutil, "which", lambda name: f"/usr/bin/{name}")


@pytest.mark.parametrize(("value", "uses"), [
    (None, True), ("", True), ("xcb", True), ("xcb:dpi=96", True), ("wayland;xcb", True),
    ("wayland", False), ("offscreen", False), ("minimal", False)])
def test_qt_uses_xcb_follows_qt_qpa_platform(value, uses):
    env = {} if value is None else {"QT_QPA_PLATFORM": value}
    assert xcb_check.qt_uses_xcb(env, "linux") is uses
    assert not xcb_check.qt_uses_xcb(env, "darwin") and not xcb_check.qt_uses_xcb(env, "win32")


@LINUX
def test_missing_library_is_one_line_and_status_2(x11_session, monkeypatch, capsys):
    """`grok-desktop` with libxcb-icccm and libxcb-keysyms unavailable: one line on stderr
    naming both packages and the apt command, status 2, and Qt is never started."""
    import app.gui.main

    started = []
    monkeypatch.setattr(app.gui.main, "run_gui", lambda **kw: started.append(kw) or 0)
    monkeypatch.setattr(xcb_check, "_load", loader({"libxcb-icccm.so.4", "libxcb-keysyms.so.1"}))
    assert cli.main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and started == []
    assert err == ("grok-desktop: error: the GUI cannot start: Qt's X11 platform plugin (xcb) "
                   "needs system libraries that are missing (libxcb-icccm.so.4, "
                   "libxcb-keysyms.so.1); install them with: sudo apt install libxcb-icccm4 "
                   "libxcb-keysyms1\n")


@LINUX
def test_all_libraries_present_opens_the_gui(x11_session, monkeypatch, capsys):
    """Every library loads: the GUI starts (with the CLI's arguments), nothing is printed."""
    import app.gui.main

    started, calls = [], []
    monkeypatch.setattr(app.gui.main, "run_gui", lambda **kw: started.append(kw) or 0)
    monkeypatch.setattr(xcb_check, "_load", loader(set(), calls))
    assert cli.main(["--demo"]) == 0
    assert started == [{"demo": True, "model": None}]
    assert calls == list(xcb_check.XCB_LIBRARIES)
    assert capsys.readouterr() == ("", "")


def test_other_platforms_are_not_checked(monkeypatch):
    """QT_QPA_PLATFORM=offscreen (the tests, headless use) or wayland: nothing is loaded."""
    calls: list[str] = []
    for value in ("offscreen", "wayland"):
        xcb_check.check_xcb_libraries({"QT_QPA_PLATFORM": value}, "linux", loader(set(), calls))
    xcb_check.check_xcb_libraries({}, "darwin", loader(set(), calls))
    assert calls == []


def test_message_without_apt_and_in_a_wayland_session():
    """No apt: the sonames and the Debian names; a Wayland session also offers Qt's wayland
    plugin. Always one line."""
    missing = ["libxcb-cursor.so.0"]
    line = xcb_check.missing_message(missing, {"WAYLAND_DISPLAY": "wayland-0"}, has_apt=False)
    assert "\n" not in line
    assert ("install your distribution's packages that provide libxcb-cursor.so.0 "
            "(Debian/Ubuntu: libxcb-cursor0)") in line
    assert line.endswith("; or run on Wayland with QT_QPA_PLATFORM=wayland")
    with pytest.raises(UserError, match=r"sudo apt install libxcb-cursor0 libxkbcommon-x11-0$"):
        xcb_check.check_xcb_libraries(
            {"QT_QPA_PLATFORM": "xcb"}, "linux",
            loader({"libxcb-cursor.so.0", "libxkbcommon-x11.so.0"}))


@LINUX
def test_the_real_loader_tells_present_from_absent():
    """_load is the dynamic linker's own search: libc loads, a made-up soname does not."""
    xcb_check._load("libc.so.6")
    with pytest.raises(OSError):
        xcb_check._load("libgrok-desktop-no-such-library.so.9")


def test_readme_names_every_package():
    """The README's Quick start installs exactly the packages the check knows."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^sudo apt install (.+)$", text, re.MULTILINE)
    assert [c.split() for c in commands] == [xcb_check.packages()]
    assert "Debian 12 / Ubuntu 24.04" in text
