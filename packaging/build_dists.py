"""Build the sdist, then the wheel from that sdist (as `python -m build` does), offline.

Calls setuptools' PEP 517 hooks directly with the installed setuptools, so it needs neither
the `build` package nor network access for an isolated build environment. Works in a copy of
the project files, so the checkout gets no build/ or *.egg-info folders. Building the wheel
from the unpacked sdist proves the sdist is complete (app code, resources, pyproject).

    python3 packaging/build_dists.py OUT_DIR     # prints the sdist and wheel paths
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# what an sdist is made from; anything else in the checkout is not part of the package
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "app", "resources")
_HOOK = (
    "import sys; from setuptools import build_meta as b; "
    "print(getattr(b, sys.argv[1])(sys.argv[2]))"
)


def _hook(hook: str, project: Path, out_dir: Path) -> Path:
    """Run one PEP 517 hook in a fresh interpreter with `project` as the working directory."""
    result = subprocess.run(
        [sys.executable, "-c", _HOOK, hook, str(out_dir)], cwd=project, text=True,
        capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{hook} failed in {project}:\n{result.stdout}\n{result.stderr}")
    return out_dir / result.stdout.strip().splitlines()[-1]


def _copy_sources(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def build(out_dir: Path) -> tuple[Path, Path]:
    """(sdist, wheel) written to out_dir; the wheel is built from the unpacked sdist."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="grok-desktop-dists-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        _copy_sources(tree)
        sdist = _hook("build_sdist", tree, out_dir.resolve())
        with tarfile.open(sdist) as tar:
            tar.extractall(Path(tmp) / "unpacked", filter="data")
        unpacked = next((Path(tmp) / "unpacked").iterdir())
        wheel = _hook("build_wheel", unpacked, out_dir.resolve())
    return sdist, wheel


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 packaging/build_dists.py OUT_DIR", file=sys.stderr)
        return 2
    for path in build(Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
