"""Before Qt starts on Linux/X11: are the system libraries of Qt's xcb platform plugin there?

PySide6 (and our PyInstaller bundle) carries Qt but not the X11 client libraries its xcb
platform plugin links against. A fresh Debian 12 / Ubuntu 24.04 desktop lacks some of them
(libxcb-cursor0, needed since Qt 6.5, libxcb-icccm4, libxcb-keysyms1, ...), and Qt then aborts
with "could not load the Qt platform plugin xcb" and a core dump. `check_xcb_libraries()` looks
first and raises a UserError with one line naming the missing packages and the apt command;
the CLI prints it and exits with status 2.

The list is what `ldd` reports for PySide6 6.11's libQt6XcbQpa.so.6 among X11/xcb/xkb
libraries (Qt's "Qt for X11 Requirements" page lists the same family); GL, fontconfig, D-Bus
and glib are left out: every desktop has them, and their package names differ between Debian
12 and Ubuntu 24.04 (the t64 renames). Each library is loaded by its soname with ctypes, the
search the dynamic linker makes for Qt (LD_LIBRARY_PATH included, which the frozen app sets).
Qt-free on purpose: it runs before PySide6 creates the QApplication.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from collections.abc import Callable, Mapping

from app.errors import UserError

# soname -> the Debian/Ubuntu package that ships it (the same name on Debian 12 and Ubuntu 24.04)
XCB_LIBRARIES: dict[str, str] = {
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
}



def packages() -> list[str]:
    """Every package of XCB_LIBRARIES, in table order (README and the .deb's Depends)."""
    return list(dict.fromkeys(XCB_LIBRARIES.values()))


def qt_uses_xcb(env: Mapping[str, str] | None = None, platform: str | None = None) -> bool:
    """Whether Qt will try its xcb plugin: on Linux, with QT_QPA_PLATFORM unset (xcb is the
    default, also in a GNOME Wayland session) or naming xcb ("xcb", "wayland;xcb", ...)."""
    env = os.environ if env is None else env
    if not (platform or sys.platform).startswith("linux"):
        return False
    wanted = env.get("QT_QPA_PLATFORM", "").strip()
    if not wanted:
        return True
    return any(name.split(":")[0].strip() == "xcb" for name in wanted.split(";"))


def _load(soname: str) -> None:
    """Raises OSError if the dynamic linker cannot load `soname`."""
    ctypes.CDLL(soname)


def missing_xcb_libraries(load: Callable[[str], None] | None = None) -> list[str]:
    """The sonames of XCB_LIBRARIES that cannot be loaded, in table order."""
    load = load or _load
    missing = []
    for soname in XCB_LIBRARIES:
        try:
            load(soname)
        except OSError:
            missing.append(soname)
    return missing


def missing_message(sonames: list[str], env: Mapping[str, str] | None = None,
                    has_apt: bool | None = None) -> str:
    """One line: what is missing and the command that installs it."""
    env = os.environ if env is None else env
    packages = " ".join(dict.fromkeys(XCB_LIBRARIES[s] for s in sonames))
    has_apt = shutil.which("apt") is not None if has_apt is None else has_apt
    if has_apt:
        fix = f"install them with: sudo apt install {packages}"
    else:
        fix = (f"install your distribution's packages that provide {', '.join(sonames)} "
               f"(Debian/Ubuntu: {packages})")
    line = (f"the GUI cannot start: Qt's X11 platform plugin (xcb) needs system libraries "
            f"that are missing ({', '.join(sonames)}); {fix}")
    if env.get("WAYLAND_DISPLAY") and not env.get("QT_QPA_PLATFORM"):
        line += "; or run on Wayland with QT_QPA_PLATFORM=wayland"
    return line


def check_xcb_libraries(env: Mapping[str, str] | None = None, platform: str | None = None,
                        load: Callable[[str], None] | None = None) -> None:
    """Raise UserError (one line: the missing packages and the apt command) if Qt would use
    its xcb plugin and a library it needs cannot be loaded. Does nothing elsewhere."""
    if not qt_uses_xcb(env, platform):
        return
    missing = missing_xcb_libraries(load)
    if missing:
        raise UserError(missing_message(missing, env))
