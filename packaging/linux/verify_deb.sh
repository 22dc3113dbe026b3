#!/usr/bin/env bash
# Install the built .deb, use it as a person would, remove it, and check what stays:
#   1. `apt-get install ./PACKAGE.deb` (so the Depends must resolve from the archive; plain
#      `dpkg -i` where apt-get is missing); the command, the menu entry and the hicolor icons
#      are where desktops look;
#   2. as an unprivileged user (nobody) with a fresh home: --version, a demo `generate`
#      (with GROK_DESKTOP_HOME) and a demo `ask` that stores a conversation in ~/.local/share;
#   3. the GUI opens a "Grok Desktop" window under Xvfb (when xvfb-run is installed;
#      SCREENSHOT=file.png keeps a picture of it, with ImageMagick's `import`), else with Qt's
#      offscreen platform: it must start, keep running for 8 s and print no error;
#   4. nothing was written under /opt/grok-desktop while running;
#   5. `dpkg -r` removes every installed file and leaves the user's conversations alone.
# Needs nothing beyond a minimal Debian (debootstrap --variant=minbase): no python3, no X.
# Run as root on a machine where grok-desktop is not installed:
#   packaging/linux/verify_deb.sh packaging/dist/grok-desktop_<version>_amd64-cpu.deb
set -euo pipefail

DEB="$(realpath "${1:?usage: verify_deb.sh PACKAGE.deb}")"
[[ $EUID -eq 0 ]] || { echo "run as root (dpkg -i / dpkg -r)" >&2; exit 2; }
if dpkg -s grok-desktop >/dev/null 2>&1; then
    echo "grok-desktop is already installed here; remove it first (dpkg -r grok-desktop)" >&2; exit 2
fi
USER_HOME="$(mktemp -d /tmp/grok-desktop-verify-XXXXXX)"
chown nobody "$USER_HOME"
APP_PID=""
cleanup() {
    [[ -n "$APP_PID" ]] && kill "$APP_PID" 2>/dev/null || true
    if dpkg -s grok-desktop >/dev/null 2>&1; then dpkg -r grok-desktop >/dev/null || true; fi
    rm -rf "$USER_HOME"
}
trap cleanup EXIT
pass() { printf '  ok: %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
as_user() { runuser -u nobody -- env -i PATH=/usr/bin:/bin HOME="$USER_HOME" LANG=C.UTF-8 "$@"; }

echo "== install $(basename "$DEB") ($(( $(stat -c %s "$DEB") / 1048576 )) MB)"
started=$SECONDS
if command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$DEB" > "$USER_HOME/apt.log" 2>&1 \
        || { tail -20 "$USER_HOME/apt.log" >&2; fail "apt-get install $DEB"; }
    pass "apt-get install: $(grep -Eo '[0-9]+ newly installed' "$USER_HOME/apt.log" || echo "done") in $((SECONDS - started)) s"
else
    dpkg -i "$DEB" || fail "dpkg -i (missing dependencies? apt-get install -f)"
fi
sleep 1; mark="$(mktemp)"  # anything under /opt newer than this was written by the app
[[ "$(command -v grok-desktop)" == /usr/bin/grok-desktop ]] || fail "grok-desktop not on PATH"
pass "grok-desktop is /usr/bin/grok-desktop -> $(readlink /usr/bin/grok-desktop)"
desktop=/usr/share/applications/grok-desktop.desktop
[[ -f "$desktop" ]] || fail "no $desktop"
if command -v desktop-file-validate >/dev/null; then
    desktop-file-validate "$desktop" || fail "desktop-file-validate $desktop"
fi
pass "menu entry $desktop ($(grep -m1 '^Name=' "$desktop"))"
for size in 16 24 32 48 64 128 256 512; do
    [[ -f "/usr/share/icons/hicolor/${size}x${size}/apps/grok-desktop.png" ]] || fail "no ${size}px icon"
done
[[ -f /usr/share/icons/hicolor/scalable/apps/grok-desktop.svg ]] || fail "no scalable icon"
pass "hicolor icons: 16 24 32 48 64 128 256 512 px and scalable"

echo "== run as an unprivileged user (nobody, HOME=$USER_HOME)"
version="$(as_user grok-desktop --version)"
pass "$version"
as_user GROK_DESKTOP_HOME="$USER_HOME/portable" grok-desktop generate --demo --prompt hi \
    --max-tokens 8 --temperature 0 --json > "$USER_HOME/generate.json" || fail "demo generate"
# plain grep, not python3: a minimal Debian has no Python besides the one in the bundle
tokens="$(grep -Eo '"completion_tokens": *[0-9]+' "$USER_HOME/generate.json" | grep -Eo '[0-9]+$' || true)"
[[ "${tokens:-0}" -gt 0 ]] || fail "demo generate made no tokens: $(head -c 300 "$USER_HOME/generate.json")"
pass "demo generate: $tokens tokens"
grep -Eq '"folder": *"/opt/grok-desktop/' "$USER_HOME/generate.json" \
    || fail "the demo model is not the bundled one"
[[ -d "$USER_HOME/portable/cache/tokenizers" ]] || fail "tokenizer cache not under GROK_DESKTOP_HOME"
as_user grok-desktop ask --demo --max-tokens 8 "hello from verify_deb" > /dev/null || fail "demo ask"
db="$USER_HOME/.local/share/grok-desktop/conversations.sqlite3"
[[ -f "$db" ]] || fail "the conversation was not stored in $db"
pass "conversation stored in ~/.local/share/grok-desktop/, tokenizer cache in ~/.cache/grok-desktop/"

if command -v xvfb-run >/dev/null; then
    echo "== the GUI under Xvfb"
    as_user xvfb-run -a -s "-screen 0 1280x800x24" sh -c '
        grok-desktop --demo & app=$!
        for _ in $(seq 60); do
            sleep 0.5
            xwininfo -root -tree 2>/dev/null | grep "Grok Desktop" | grep -qv " 1x1+" && break
        done
        sleep 2  # let it paint
        xwininfo -root -tree | grep "Grok Desktop" | grep -v " 1x1+" > "$HOME/window.txt" || true
        [ -n "$0" ] && import -window root "$HOME/shot.png" 2>/dev/null
        kill $app' "${SCREENSHOT:+1}" || true
    [[ -s "$USER_HOME/window.txt" ]] || fail "no Grok Desktop window appeared"
    pass "window: $(sed 's/^ *//' "$USER_HOME/window.txt" | cut -c1-80)"
    if [[ -n "${SCREENSHOT:-}" && -f "$USER_HOME/shot.png" ]]; then
        cp "$USER_HOME/shot.png" "$SCREENSHOT"; pass "screenshot: $SCREENSHOT"
    fi
else
    echo "== the GUI with Qt's offscreen platform (no xvfb-run here)"
    as_user QT_QPA_PLATFORM=offscreen sh -c '
        grok-desktop --demo > "$HOME/gui.log" 2>&1 & app=$!
        sleep 8
        if kill -0 $app 2>/dev/null; then echo running > "$HOME/gui.state"; kill $app; fi
        wait $app 2>/dev/null || true'
    [[ -f "$USER_HOME/gui.state" ]] || { cat "$USER_HOME/gui.log" >&2; fail "the GUI exited within 8 s"; }
    if grep -Eqi 'traceback|error|could not|cannot|failed' "$USER_HOME/gui.log"; then
        cat "$USER_HOME/gui.log" >&2; fail "the GUI printed errors"
    fi
    pass "GUI ran 8 s offscreen with the demo model, nothing on stderr but: $(grep -c . "$USER_HOME/gui.log") lines"
fi

written="$(find /opt/grok-desktop -newer "$mark" -print | sed -n 1,5p)"
[[ -z "$written" ]] || fail "the app wrote into its install folder: $written"
pass "nothing written under /opt/grok-desktop"
rm -f "$mark"

echo "== remove"
files="$(dpkg -L grok-desktop | grep -c .)"
dpkg -r grok-desktop
for path in /opt/grok-desktop /usr/bin/grok-desktop "$desktop" \
        /usr/share/icons/hicolor/256x256/apps/grok-desktop.png; do
    [[ ! -e "$path" && ! -L "$path" ]] || fail "$path is still there after dpkg -r"
done
pass "dpkg -r removed the app ($files paths)"
[[ -f "$db" && -d "$USER_HOME/.cache/grok-desktop/tokenizers" ]] || fail "user data went away"
pass "the user's conversations and caches are still there"
echo "verify_deb: all checks passed"
