"""What the PyInstaller folder really loads, and which shared libraries it takes from the system.

build_deb.sh runs this over the bundle before computing the package's Depends:

    python3 bundle_libs.py BUNDLE_DIR --elves FILE    # the ELF files that load, one a line
    python3 bundle_libs.py BUNDLE_DIR --report        # also: orphans, system libs -> packages

Starting points ("roots") are what something opens by itself: the executables, Python extension
modules (Python imports them), Qt plugins (Qt opens them), libpython (PyInstaller's bootloader
opens it) and `DLOPENED` (torch opens these with ctypes). From there the DT_NEEDED entries
(`readelf -d`) are followed through the bundle. A bundled library nothing reaches is an
*orphan*: dead weight whose own system dependencies would otherwise land in Depends (the GTK 3
stack did, through a libgtk-3 left behind when Qt's GTK theme plugin was dropped); the build
fails on orphans so `bundle_config.DROP_PATTERNS` names them. A needed library the bundle does not
ship is a *system library*: `ldconfig -p` finds it and `dpkg -S` names its package, which is the
report's audit trail; dpkg-shlibdeps (run by build_deb.sh on the `--elves` list) turns the same
libraries into versioned Depends. Needs binutils' readelf (a dependency of dpkg-dev).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Libraries that are opened with dlopen()/ctypes rather than linked: roots of the walk.
# libpython: PyInstaller's bootloader; libtorch_global_deps: torch/__init__.py (ctypes.CDLL);
# libonnxruntime_providers_shared: onnxruntime dlopens it when it sets up execution providers;
# libllvmlite: llvmlite.binding opens it with ctypes (numba's compiler, app/engine/cpu_int4.py).
DLOPENED = ["libpython3*.so*", "libtorch_global_deps.so*", "libonnxruntime_providers_shared.so*",
            "libllvmlite.so*"]


@dataclass
class Elf:
    """One ELF file of the bundle: `path` relative to the bundle root ("/"-separated)."""

    path: str
    soname: str | None = None
    needed: list[str] = field(default_factory=list)
    executable: bool = False  # has a program interpreter (a program, not a library)


def is_root(elf: Elf) -> bool:
    """Whether something outside the link graph opens this file (see the module docstring)."""
    name = elf.path.rsplit("/", 1)[-1]
    if elf.executable:
        return True
    if ".cpython-" in name or name.endswith(".abi3.so") or "/lib-dynload/" in f"/{elf.path}":
        return True  # Python extension module
    if "/plugins/" in f"/{elf.path}":
        return True  # Qt plugin
    if not name.startswith("lib") and name.endswith(".so"):
        return True  # extension module with a bare name (e.g. _C.so)
    return any(fnmatch.fnmatch(name, pattern) for pattern in DLOPENED)


@dataclass
class Closure:
    """The result of the walk: bundle paths that load, orphans, and system sonames needed
    (soname -> the bundle paths that need it)."""

    loaded: list[str]
    orphans: list[str]
    system: dict[str, list[str]]


def closure(elves: Iterable[Elf]) -> Closure:
    """Walk DT_NEEDED from the roots through the bundle.

    A needed name is provided by the bundle when some bundled file has that SONAME or that file
    name (PyInstaller stores libraries under their soname). Orphans are bundled files that are
    neither roots nor reached; they are listed, not loaded, so their needs are ignored.
    """
    elves = list(elves)
    provides: dict[str, list[Elf]] = {}
    for elf in elves:
        for name in {elf.soname, elf.path.rsplit("/", 1)[-1]} - {None}:
            provides.setdefault(str(name), []).append(elf)
    todo = [elf for elf in elves if is_root(elf)]
    seen = {elf.path for elf in todo}
    system: dict[str, list[str]] = {}
    while todo:
        elf = todo.pop()
        for name in elf.needed:
            inside = provides.get(name)
            if not inside:
                system.setdefault(name, []).append(elf.path)
                continue
            for dep in inside:
                if dep.path not in seen:
                    seen.add(dep.path)
                    todo.append(dep)
    loaded = sorted(seen)
    orphans = sorted(elf.path for elf in elves if elf.path not in seen)
    return Closure(loaded, orphans, {k: sorted(v) for k, v in sorted(system.items())})


_DYN = re.compile(r"\((NEEDED|SONAME)\)\s+\S.*?\[(.+)\]")


def read_elf(path: Path, rel: str) -> Elf | None:
    """DT_NEEDED, DT_SONAME and whether it is a program, from `readelf -dl`; None for a file
    that is not ELF. Raises FileNotFoundError when readelf is missing."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"\x7fELF":
            return None
    out = subprocess.run(["readelf", "-d", "-l", "-W", str(path)], capture_output=True,
                         text=True, check=False).stdout
    elf = Elf(rel, executable="Requesting program interpreter" in out)
    for kind, value in _DYN.findall(out):
        if kind == "NEEDED":
            elf.needed.append(value)
        else:
            elf.soname = value
    return elf


def scan(bundle: Path) -> list[Elf]:
    """Every ELF file under `bundle` (symlinks skipped: their targets are scanned)."""
    found = []
    for dirpath, _dirs, files in os.walk(bundle):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            elf = read_elf(path, path.relative_to(bundle).as_posix())
            if elf is not None:
                found.append(elf)
    return found


def ldconfig_paths() -> dict[str, str]:
    """soname -> path of the x86-64/the machine's library, from `ldconfig -p`."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                         check=False).stdout
    arch = "x86-64" if os.uname().machine == "x86_64" else os.uname().machine
    paths: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        match = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if match and (arch in match.group(2) or "," not in match.group(2)):
            paths.setdefault(match.group(1), match.group(3))
    return paths


def owning_package(path: str) -> str | None:
    """The Debian package holding `path` (`dpkg -S`), trying the merged-/usr spellings."""
    real = os.path.realpath(path)
    candidates = [path, real]
    for p in (path, real):
        if p.startswith("/usr/lib/"):
            candidates.append(p[len("/usr"):])
        elif p.startswith("/lib/"):
            candidates.append("/usr" + p)
    for candidate in dict.fromkeys(candidates):
        out = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True,
                             check=False)
        if out.returncode == 0 and ":" in out.stdout:
            return out.stdout.split(":", 1)[0].strip()
    return None


def system_packages(sonames: Iterable[str],
                    where: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """soname -> Debian package (None: not installed on this machine, or not from a package)."""
    where = ldconfig_paths() if where is None else where
    dirs = list(dict.fromkeys(os.path.dirname(p) for p in where.values()))

    def path_of(name: str) -> str | None:
        # a DT_NEEDED may name a file rather than a soname (numba's OpenMP pool needs
        # libgomp.so.1.0.0): then look for it where the system's libraries are
        if name in where:
            return where[name]
        return next((p for d in dirs if os.path.exists(p := os.path.join(d, name))), None)

    found = {name: path_of(name) for name in sonames}
    return {name: owning_package(p) if p else None for name, p in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="the PyInstaller one-folder bundle (or a "
                                                  "staged tree holding it)")
    parser.add_argument("--elves", type=Path, help="write the loaded ELF files here (absolute)")
    parser.add_argument("--report", action="store_true",
                        help="print orphans and the system libraries with their packages")
    parser.add_argument("--allow-orphans", action="store_true",
                        help="list orphans without failing")
    args = parser.parse_args(argv)
    result = closure(scan(args.bundle))
    if args.elves:
        args.elves.write_text("".join(f"{args.bundle / p}\n" for p in result.loaded))
    if args.report:
        packages = system_packages(result.system)
        print(f"{len(result.loaded)} ELF files load; {len(result.system)} system libraries:")
        for name, users in result.system.items():
            print(f"  {name:32} {packages[name] or '(NOT INSTALLED)':28} for {users[0]}"
                  + (f" and {len(users) - 1} more" if len(users) > 1 else ""))
    if result.orphans:
        print(f"{len(result.orphans)} bundled ELF files nothing loads (add them to "
              "bundle_config.DROP_PATTERNS):", *result.orphans, sep="\n  ", file=sys.stderr)
        if not args.allow_orphans:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
