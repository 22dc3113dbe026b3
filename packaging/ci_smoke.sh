#!/usr/bin/env bash
# CI smoke test of the Python package (about 30-60 s on 2 cores):
#   1. build the sdist, and the wheel from the sdist (packaging/build_dists.py, offline);
#   2. check both carry the resources (demo corpus, icons, theme, .desktop file);
#   3. install the wheel into a fresh venv: torch first (TORCH_SPEC, default torch==2.13.0,
#      which pip's configuration here resolves to the local CPU wheel, as in .ci/run), then
#      the wheel with its dependencies, and check its requirements are met;
#      SMOKE_SYSTEM_SITE=1 borrows the installed packages instead (--system-site-packages);
#   4. run `grok-desktop --version` and a headless demo `generate` from that venv, from a
#      folder outside the checkout, with a throwaway GROK_DESKTOP_HOME.
# Needs: python3 with setuptools; the packages the wheel depends on must be installable.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d -t grok-desktop-smoke-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1
say() { printf '[ci_smoke] %s\n' "$*"; }

mapfile -t dists < <("$PYTHON" "$ROOT/packaging/build_dists.py" "$WORK/dist")
sdist="${dists[0]}"; wheel="${dists[1]}"
say "built $(basename "$sdist") and $(basename "$wheel")"

"$PYTHON" - "$sdist" "$wheel" <<'PY'
import sys, tarfile, zipfile
sdist, wheel = sys.argv[1:]
needed = ["demo-corpus.txt", "demo_model/config.json", "demo_model/DEMO_VERSION",
          "themes/app.qss", "icons/grok-desktop.svg",
          "icons/grok-desktop-256.png", "grok-desktop.desktop"]
in_wheel = set(zipfile.ZipFile(wheel).namelist())
in_sdist = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
missing = [f"wheel: app/resources/{n}" for n in needed if f"app/resources/{n}" not in in_wheel]
missing += [f"sdist: resources/{n}" for n in needed if f"resources/{n}" not in in_sdist]
if missing:
    sys.exit("[ci_smoke] missing from the package: " + ", ".join(missing)
             + " (see the package-dir/package-data mapping in pyproject.toml)")
print("[ci_smoke] resources are in the sdist and the wheel")
PY

VPY="$WORK/venv/bin/python"
if [[ "${SMOKE_SYSTEM_SITE:-0}" != 1 ]]; then
    # a venv with nothing borrowed, so a dependency missing from pyproject.toml shows. torch
    # first, as TORCH_SPEC names it: the CPU wheel, as .ci/run installs it (a plain `torch`
    # from PyPI would be GBs of CUDA); the rest as the wheel's metadata asks
    "$PYTHON" -m venv "$WORK/venv"
    "$VPY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
    "$VPY" -m pip install -q "$wheel"
else
    # no pip in the venv (its bundled setuptools would shadow the newer one torch requires);
    # the outer pip installs into it with --python
    "$PYTHON" -m venv --system-site-packages --without-pip "$WORK/venv"
    "$PYTHON" -m pip --python "$VPY" install -q --no-index --no-deps --force-reinstall "$wheel"
fi
"$VPY" - <<'PY'
# the wheel's own requirements (not `pip check`, which judges every package on the machine)
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
bad = []
for text in metadata.requires("grok-desktop") or []:
    req = Requirement(text)
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue  # an optional extra such as [test]
    try:
        have = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        have = None
    if have is None or not req.specifier.contains(have, prereleases=True):
        bad.append(f"{req} (installed: {have})")
if bad:
    raise SystemExit("[ci_smoke] unmet requirements: " + "; ".join(bad))
PY
say "wheel installed; its requirements are met"

cd "$WORK"  # nothing from the checkout on sys.path
"$VPY" - "$WORK/venv" <<'PY'
import sys
from pathlib import Path
import app, app.paths
venv = Path(sys.argv[1]).resolve()
for what, path in (("app", Path(app.__file__)), ("resources", app.paths.resources_dir())):
    if venv not in path.resolve().parents:
        sys.exit(f"[ci_smoke] {what} imported from {path}, not from the installed wheel")
PY
expected="grok-desktop $("$VPY" -c 'import app; print(app.__version__)')"
got="$("$WORK/venv/bin/grok-desktop" --version)"
[[ "$got" == "$expected" ]] || { say "--version printed '$got', expected '$expected'"; exit 1; }
say "$got"

GROK_DESKTOP_HOME="$WORK/home" "$WORK/venv/bin/grok-desktop" generate --demo --prompt hi \
    --max-tokens 8 --temperature 0 --json > "$WORK/generate.json"
"$VPY" - "$WORK/generate.json" "$WORK/home" <<'PY'
import json, sys
from pathlib import Path
out = json.loads(Path(sys.argv[1]).read_text())
assert out["completion_tokens"] > 0 and out["finish_reason"] in ("stop", "length"), out
assert "/app/resources/demo_model" in out["model"]["folder"], "not the bundled demo model"
print(f"[ci_smoke] demo generate: {out['completion_tokens']} tokens, {out['finish_reason']}")
PY
say "ok"
