#!/usr/bin/env bash
# Build and smoke-test the Windows installer on Linux under wine, from package registries only.
# See packaging/README.md ("Windows under wine") for what runs here and what cannot.
#
#   packaging/windows/build_under_wine.sh                      # needs WINDOWS_PYTHON, see below
#   STANDIN=1 packaging/windows/build_under_wine.sh            # installer mechanics only
#
# Steps (each one says how long it took):
#   1. Inno Setup 6.4.1 from npm (`npm pack innosetup`, the package VS Code's build uses: it
#      carries ISCC.exe and its DLLs);
#   2. the Windows wheels from PyPI: torch (CPU; PyPI's Windows torch is the CPU build),
#      PySide6-Essentials and the other runtime dependencies, PyInstaller (the set resolved
#      for Windows by uv, itself from PyPI);
#   3. a Windows CPython 3.11 x64: WINDOWS_PYTHON=a folder holding python.exe from python.org's
#      installer (a full install: PyInstaller needs pip, venv and the DLLs). No registry this
#      machine reaches (PyPI, Debian, npm) carries one, so without it the script stops here
#      with exit status 3, after steps 1-2;
#   4. under wine: the wheels into that Python (offline), PyInstaller with the shared spec,
#      a smoke test of the bundle (--version, demo generate);
#   5. ISCC.exe under wine -> packaging/dist/grok-desktop-<version>-windows-x64-cpu-setup.exe;
#   6. a silent per-user install under wine, `grok-desktop.exe --version` and a demo generate
#      from the installed copy, the Start-menu entries, a silent uninstall.
# STANDIN=1 skips 2-4 and wraps a stand-in folder (text files named like the bundle's
# executables, no real program) instead: it checks that grok-desktop.iss compiles with the real
# ISCC and that the setup installs, registers its uninstaller and shortcuts, and uninstalls,
# silently under wine. It is not the app: nothing can be run from that install.
#
# Settings (environment): WINEPREFIX (default packaging/build/wine), TORCH_SPEC
# (default torch==2.13.0), INNOSETUP_SPEC (default innosetup@6.4.1), WINDOWS_PYTHON, STANDIN.
# Needs: wine, wine64 and wine32:i386 (Debian: dpkg --add-architecture i386; apt-get install
# wine wine64 wine32:i386; ISCC.exe and Inno's setup are 32-bit), npm, python3 with pip.
# Exit status: 2 a tool is missing, 3 no Windows Python, 4 no 32-bit wine, 1 a step failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="$ROOT/packaging/build"
DIST="$ROOT/packaging/dist"
WORK="$BUILD/wine-build"
export WINEPREFIX="${WINEPREFIX:-$BUILD/wine}" WINEARCH=win64 WINEDEBUG="${WINEDEBUG:--all}"
export WINEDLLOVERRIDES="mscoree,mshtml="  # no Mono/Gecko download prompts
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
INNOSETUP_SPEC="${INNOSETUP_SPEC:-innosetup@6.4.1}"
STANDIN="${STANDIN:-0}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
started=$SECONDS
last=$SECONDS
step() { printf '\n== %s (at %ds, previous step %ds)\n' "$*" $((SECONDS - started)) $((SECONDS - last)); last=$SECONDS; }
winpath() { winepath -w "$1" 2>/dev/null; }
for tool in wine winepath npm python3; do
    command -v "$tool" >/dev/null || { echo "$tool missing (apt-get install wine wine64 npm)" >&2; exit 2; }
done
mkdir -p "$WORK" "$DIST"
VERSION="$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import bundle_config; print(bundle_config.VERSION)' "$ROOT/packaging/pyinstaller")"

step "wine prefix $WINEPREFIX"
[[ -f "$WINEPREFIX/system.reg" ]] || wine wineboot --init
wineserver -w

step "Inno Setup from npm ($INNOSETUP_SPEC)"
ISCC="$WORK/innosetup/package/bin/ISCC.exe"
if [[ ! -f "$ISCC" ]]; then
    rm -rf "$WORK/innosetup"; mkdir -p "$WORK/innosetup"
    (cd "$WORK/innosetup" && npm pack --silent "$INNOSETUP_SPEC" > /dev/null && tar xzf ./*.tgz)
fi
[[ -f "$ISCC" ]] || { echo "no ISCC.exe in the npm package $INNOSETUP_SPEC" >&2; exit 1; }

BUNDLE="$BUILD/pyinstaller-win-cpu/dist/grok-desktop"
if [[ "$STANDIN" == 1 ]]; then
    step "stand-in payload (STANDIN=1: not the app)"
    BUNDLE="$WORK/standin/grok-desktop"
    rm -rf "$BUNDLE"; mkdir -p "$BUNDLE/_internal"
    for exe in GrokDesktop.exe grok-desktop.exe; do
        printf 'stand-in for %s, not a program\n' "$exe" > "$BUNDLE/$exe"
    done
    cp "$ROOT/resources/demo-corpus.txt" "$BUNDLE/_internal/"
else
    step "Windows wheels from PyPI (win_amd64, CPython 3.11)"
    WHEELS="$WORK/wheels"
    python3 - "$ROOT/pyproject.toml" > "$WORK/runtime-requirements.txt" <<'PY'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
PY
    echo "$TORCH_SPEC" >> "$WORK/runtime-requirements.txt"
    # pip evaluates environment markers for the machine it runs on even with --platform (it
    # would fetch torch's Linux-only CUDA wheels), so uv (from PyPI) resolves the set for
    # Windows and pip downloads exactly that set
    [[ -x "$WORK/tools/bin/uv" ]] || python3 -m pip install -q --target "$WORK/tools" uv
    "$WORK/tools/bin/uv" pip compile --quiet --python-platform x86_64-pc-windows-msvc \
        --python-version 3.11 "$WORK/runtime-requirements.txt" \
        "$ROOT/packaging/requirements-build.txt" -o "$WORK/windows-requirements.txt"
    python3 -m pip download -q --no-deps --dest "$WHEELS" --platform win_amd64 \
        --python-version 3.11 --implementation cp --only-binary=:all: \
        -r "$WORK/windows-requirements.txt"
    echo "$(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"

    step "Windows CPython 3.11"
    if [[ -z "${WINDOWS_PYTHON:-}" || ! -f "${WINDOWS_PYTHON:-}/python.exe" ]]; then
        cat >&2 <<'MSG'
No Windows CPython: set WINDOWS_PYTHON to a folder holding python.exe from python.org's
Windows x64 installer (3.11+, with pip). None of the registries this build machine reaches
(PyPI, Debian, npm) carries one: npm's portable-python packages download their zip from
GitHub when installed, and PyPI and Debian have no Windows interpreter. Steps 1-2 are done;
STANDIN=1 checks the installer mechanics without the app.
MSG
        exit 3
    fi
    PY_EXE="$(winpath "$WINDOWS_PYTHON/python.exe")"

    step "wheels into the Windows Python (offline), then PyInstaller under wine"
    wine "$PY_EXE" -m pip install -q --no-index --find-links "$(winpath "$WHEELS")" \
        -r "$(winpath "$WORK/windows-requirements.txt")"
    wine "$PY_EXE" -m PyInstaller --noconfirm --log-level WARN \
        --distpath "$(winpath "$BUILD/pyinstaller-win-cpu/dist")" \
        --workpath "$(winpath "$BUILD/pyinstaller-win-cpu/work")" \
        "$(winpath "$ROOT/packaging/pyinstaller/grok-desktop.spec")"

    step "smoke test of the bundle under wine"
    home="$(mktemp -d)"
    wine "$BUNDLE/grok-desktop.exe" --version
    GROK_DESKTOP_HOME="$(winpath "$home")" wine "$BUNDLE/grok-desktop.exe" generate --demo \
        --prompt hi --max-tokens 8 --json
    rm -rf "$home"
fi

step "ISCC.exe under wine"
# ISCC.exe and the setup.exe it writes are 32-bit Windows programs: wine needs its 32-bit half
if [[ ! -f "$WINEPREFIX/drive_c/windows/syswow64/ntdll.dll" ]]; then
    cat >&2 <<'MSG'
This wine runs no 32-bit Windows programs (no syswow64\ntdll.dll in the prefix), and ISCC.exe
and Inno Setup's installers are 32-bit. On Debian: dpkg --add-architecture i386 &&
apt-get update && apt-get install wine32:i386, then remove the prefix and run this again.
MSG
    exit 4
fi
OUT="$DIST"
[[ "$STANDIN" == 1 ]] && OUT="$WORK/standin-dist"
mkdir -p "$OUT"
wine "$ISCC" /Q "/DAppVersion=$VERSION" /DVariant=cpu "/DBundleDir=$(winpath "$BUNDLE")" \
    "/DOutputDir=$(winpath "$OUT")" "$(winpath "$ROOT/packaging/windows/grok-desktop.iss")"
SETUP="$OUT/grok-desktop-$VERSION-windows-x64-cpu-setup.exe"
[[ -f "$SETUP" ]] || { echo "ISCC wrote no $SETUP" >&2; exit 1; }
echo "$SETUP: $(stat -c %s "$SETUP") bytes"

step "silent per-user install under wine"
APPDIR='C:\grok-desktop-test'
UNIX_APPDIR="$(winepath -u "$APPDIR")"
rm -rf "$UNIX_APPDIR"
wine "$SETUP" /VERYSILENT /SUPPRESSMSGBOXES /NORESTART /CURRENTUSER "/DIR=$APPDIR" "/LOG=$(winpath "$WORK/setup.log")"
wineserver -w
[[ -f "$UNIX_APPDIR/GrokDesktop.exe" && -f "$UNIX_APPDIR/grok-desktop.exe" ]] \
    || { echo "the install did not put the executables in $APPDIR" >&2; exit 1; }
[[ -f "$UNIX_APPDIR/unins000.exe" ]] || { echo "no uninstaller in $APPDIR" >&2; exit 1; }
links="$(find "$WINEPREFIX/drive_c/users" -path '*Start Menu*' -name 'Grok Desktop*.lnk' | wc -l)"
[[ "$links" -ge 2 ]] || { echo "expected 2 Start-menu entries, found $links" >&2; exit 1; }
echo "  ok: installed into $APPDIR ($(du -sh "$UNIX_APPDIR" | cut -f1)), uninstaller and $links Start-menu entries"

if [[ "$STANDIN" != 1 ]]; then
    step "run the installed copy under wine"
    home="$(mktemp -d)"
    wine "$UNIX_APPDIR/grok-desktop.exe" --version
    GROK_DESKTOP_HOME="$(winpath "$home")" wine "$UNIX_APPDIR/grok-desktop.exe" generate --demo \
        --prompt Hi --max-tokens 5
    rm -rf "$home"
fi

step "silent uninstall under wine"
wine "$UNIX_APPDIR/unins000.exe" /VERYSILENT /SUPPRESSMSGBOXES /NORESTART
wineserver -w
sleep 2  # the uninstaller deletes itself from a copy that exits after it
[[ ! -e "$UNIX_APPDIR/GrokDesktop.exe" ]] || { echo "uninstall left $APPDIR/GrokDesktop.exe" >&2; exit 1; }
echo "  ok: uninstalled"
step "done"
