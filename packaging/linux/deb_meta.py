"""Debian metadata for the .deb: the version mapping and the DEBIAN/control text.

Used by build_deb.sh (`python3 deb_meta.py control --variant cpu --installed-size N --depends
"..."` prints the control file, with the X11 libraries of Qt's xcb plugin added to Depends;
`version` prints the Debian version, `changelog` a changelog);
tested by tests/test_packaging.py. Name and version come from app/__init__.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pyinstaller"))
import bundle_config as cfg

sys.path.insert(0, str(cfg.ROOT))
from app.gui.xcb_check import packages as xcb_packages

MAINTAINER = "Grok Desktop developers <grok-desktop@users.noreply.github.com>"
# Packages the app needs beyond the shared libraries dpkg-shlibdeps finds: a colour emoji
# font, so emoji in replies and PDF exports are not empty boxes on a fresh Debian; GNU
# OpenMP for numba's threading layer (app/engine/cpu_int4.py: its omppool links the file
# name libgomp.so.1.0.0, which dpkg-shlibdeps cannot map to a package; without it numba
# falls back to its single-caller workqueue layer).
EXTRA_DEPENDS = ("fonts-noto-color-emoji", "libgomp1")
# Runtime packages Qt needs, in Depends whatever the scan of the bundle finds: the X11/xcb
# libraries of Qt's xcb platform plugin, the list the app checks before it starts the GUI
# (app/gui/xcb_check.py; the scan finds them too and adds versions, but names them only if
# the build machine has them), then EXTRA_DEPENDS. Added to the computed Depends by
# `merge_depends`; a computed, versioned entry for the same package wins.
QT_RUNTIME_PACKAGES = [*xcb_packages(), *EXTRA_DEPENDS]
VARIANTS = {
    "cpu": "CPU-only build (PyTorch without CUDA): runs everywhere, no GPU acceleration.",
    "cuda": "NVIDIA build (PyTorch with CUDA 12): uses an NVIDIA GPU when the driver is "
            "present, else the CPU.",
}


def debian_version(version: str) -> str:
    """PEP 440 -> Debian ordering: 1.0rc1 -> 1.0~rc1 (sorts before 1.0), 1.0.post1 -> 1.0+post1."""
    v = re.sub(r"\.?(a|b|rc)(\d+)", r"~\1\2", version)
    v = re.sub(r"\.?dev(\d+)", r"~dev\1", v)
    return re.sub(r"\.?post(\d+)", r"+post\1", v)


def merge_depends(computed: str, static: list[str] | None = None) -> str:
    """`computed` (dpkg-shlibdeps' comma-separated Depends) plus the `static` packages
    (default QT_RUNTIME_PACKAGES) not already named in it, in that order, without duplicates.
    A package is "named" when it is the first word of an entry or of one of its alternatives."""
    static = QT_RUNTIME_PACKAGES if static is None else static
    entries = [e.strip() for e in computed.split(",") if e.strip()]
    named = {alt.split()[0] for e in entries for alt in e.split("|") if alt.strip()}
    out = list(dict.fromkeys(entries))
    out += [pkg for pkg in dict.fromkeys(static) if pkg not in named]
    return ", ".join(out)


def control_text(variant: str, installed_kib: int, depends: str, arch: str = "amd64") -> str:
    """The DEBIAN/control file of the package; `depends` (shared libraries) gets
    EXTRA_DEPENDS appended."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")
    depends = merge_depends(depends, list(EXTRA_DEPENDS))
    fields = {
        "Package": cfg.APP_ID,
        "Version": debian_version(cfg.VERSION),
        "Architecture": arch,
        "Maintainer": MAINTAINER,
        "Installed-Size": str(installed_kib),
        "Depends": depends,
        "Section": "utils",
        "Priority": "optional",
        "Description": f"{cfg.APP_NAME}: chat with xAI's Grok-2 on your own computer",
    }
    lines = [f"{key}: {value}" for key, value in fields.items() if value]
    body = [
        "A desktop chat app that runs the open-weights Grok-2 model locally, with",
        "conversation history, export and a built-in tiny demo model. Model weights",
        "are not included: point the app at a downloaded Grok-2 folder.",
        ".",
        VARIANTS[variant],
    ]
    lines += [f" {line}" for line in body]
    return "\n".join(lines) + "\n"


def changelog_text(when: str) -> str:
    """A one-entry Debian changelog (lintian wants one); `when` is an RFC 2822 date."""
    version = debian_version(cfg.VERSION)
    return (f"{cfg.APP_ID} ({version}) stable; urgency=medium\n\n"
            f"  * {cfg.APP_NAME} {cfg.VERSION}.\n\n -- {MAINTAINER}  {when}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("version", help="print the Debian version")
    log = sub.add_parser("changelog", help="print a one-entry Debian changelog")
    log.add_argument("--date", required=True, help="RFC 2822 date, e.g. from `date -R`")
    control = sub.add_parser("control", help="print DEBIAN/control")
    control.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    control.add_argument("--installed-size", type=int, required=True, metavar="KIB")
    control.add_argument("--depends", default="",
                         help="computed Depends; QT_RUNTIME_PACKAGES are added to it")
    control.add_argument("--arch", default="amd64")
    args = parser.parse_args(argv)
    if args.what == "version":
        print(debian_version(cfg.VERSION))
    elif args.what == "changelog":
        sys.stdout.write(changelog_text(args.date))
    else:
        # dpkg-shlibdeps' line plus QT_RUNTIME_PACKAGES: the X11 libraries of Qt's xcb plugin
        # are named even when the build machine lacks some and --ignore-missing-info skipped them
        sys.stdout.write(control_text(args.variant, args.installed_size,
                                      merge_depends(args.depends), args.arch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
