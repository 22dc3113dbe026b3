#!/usr/bin/env bash
# Build the macOS disk image: PyInstaller "Grok Desktop.app" -> packaging/dist/*.dmg.
# See packaging/README.md ("macOS"). Apple silicon only (PyTorch ships no Intel macOS wheels).
#
#   packaging/macos/build_macos.sh
#   CODESIGN_IDENTITY="Developer ID Application: Name (TEAMID)" NOTARY_PROFILE=grok \
#       packaging/macos/build_macos.sh          # signed, notarized and stapled
#
# Settings (environment): PYTHON (3.11+ from python.org or Homebrew), TORCH_SPEC
# (default torch==2.13.0; PyPI's macOS wheel includes the Metal backend), CODESIGN_IDENTITY
# (unset: ad-hoc signature, fine for local use), NOTARY_PROFILE (a `xcrun notarytool
# store-credentials` profile; needs CODESIGN_IDENTITY).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
BUILD_DIR="$ROOT/packaging/build"
DIST_DIR="$ROOT/packaging/dist"
VENV="$BUILD_DIR/venv-macos"
export CODESIGN_IDENTITY="${CODESIGN_IDENTITY:-}"  # read by the spec
export PIP_DISABLE_PIP_VERSION_CHECK=1
started=$SECONDS
step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - started)); }

[[ "$(uname -s)" == Darwin ]] || { echo "build_macos.sh runs on macOS only" >&2; exit 2; }
[[ "$(uname -m)" == arm64 ]] || { echo "build on Apple silicon (arm64): PyTorch has no Intel macOS wheels" >&2; exit 2; }
if [[ -n "${NOTARY_PROFILE:-}" && -z "$CODESIGN_IDENTITY" ]]; then
    echo "NOTARY_PROFILE needs CODESIGN_IDENTITY (a Developer ID Application certificate)" >&2; exit 2
fi

step "build venv"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -c "import sys,tomllib; print('\n'.join(tomllib.load(open(sys.argv[1],'rb'))['project']['dependencies']))" \
    "$ROOT/pyproject.toml" > "$BUILD_DIR/runtime-requirements.txt"
"$VENV/bin/python" -m pip install -q -r "$BUILD_DIR/runtime-requirements.txt" \
    -r "$ROOT/packaging/requirements-build.txt"

step "PyInstaller app bundle"
rm -rf "$BUILD_DIR/pyinstaller-macos"
"$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
    --distpath "$BUILD_DIR/pyinstaller-macos/dist" --workpath "$BUILD_DIR/pyinstaller-macos/work" \
    "$ROOT/packaging/pyinstaller/grok-desktop.spec"
APP="$BUILD_DIR/pyinstaller-macos/dist/Grok Desktop.app"

step "smoke test of the app"
home="$(mktemp -d)"
"$APP/Contents/MacOS/grok-desktop" --version
GROK_DESKTOP_HOME="$home" "$APP/Contents/MacOS/grok-desktop" generate --demo --prompt hi --max-tokens 8 --json
rm -rf "$home"
codesign --verify --deep --strict "$APP"

step "disk image"
VERSION="$("$VENV/bin/python" -c "import sys; sys.path.insert(0, sys.argv[1]); import bundle_config; print(bundle_config.VERSION)" "$ROOT/packaging/pyinstaller")"
DMG="$DIST_DIR/grok-desktop-$VERSION-macos-arm64.dmg"
stage="$BUILD_DIR/dmg-stage"
rm -rf "$stage" "$DMG"; mkdir -p "$stage" "$DIST_DIR"
cp -R "$APP" "$stage/"
ln -s /Applications "$stage/Applications"  # drag-to-install target
hdiutil create -volname "Grok Desktop" -srcfolder "$stage" -ov -format UDZO "$DMG"

if [[ -n "$CODESIGN_IDENTITY" ]]; then
    step "sign the disk image"
    codesign --sign "$CODESIGN_IDENTITY" --timestamp "$DMG"
fi
if [[ -n "${NOTARY_PROFILE:-}" ]]; then
    step "notarize and staple"
    xcrun notarytool submit "$DMG" --keychain-profile "$NOTARY_PROFILE" --wait
    xcrun stapler staple "$DMG"
fi

step "done"
printf '%s: %s MB\n' "$DMG" "$(( $(stat -f %z "$DMG") / 1048576 ))"
