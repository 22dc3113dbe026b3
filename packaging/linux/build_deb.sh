#!/usr/bin/env bash
# Build the Linux .deb: a PyInstaller one-folder bundle under /opt/grok-desktop, a
# /usr/bin/grok-desktop link, the .desktop entry and hicolor icons. See packaging/README.md.
#
#   packaging/linux/build_deb.sh                  # CPU build -> packaging/dist/*-cpu.deb
#   VARIANT=cuda packaging/linux/build_deb.sh     # NVIDIA build (torch from PyPI has CUDA 12)
#
# Settings (environment): VARIANT=cpu|cuda, PYTHON (3.11+, built with a shared libpython),
# TORCH_SPEC (default torch==2.13.0), TORCH_PIP_ARGS (e.g. an --index-url for the CPU wheels),
# BUILD_DIR (default packaging/build), DIST_DIR (default packaging/dist), XZ_LEVEL (default 6),
# REUSE_BUNDLE=1 (package the last PyInstaller folder again, e.g. after editing the .desktop),
# CLEAN=1 (PyInstaller from nothing, not reusing its analysis in packaging/build).
# Needs: dpkg-deb, dpkg-shlibdeps, readelf (dpkg-dev and its binutils). Runs unprivileged
# (dpkg-deb --root-owner-group).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VARIANT="${VARIANT:-cpu}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_PIP_ARGS="${TORCH_PIP_ARGS:-}"
BUILD_DIR="${BUILD_DIR:-$ROOT/packaging/build}"
DIST_DIR="${DIST_DIR:-$ROOT/packaging/dist}"
XZ_LEVEL="${XZ_LEVEL:-6}"
VENV="$BUILD_DIR/venv-linux-$VARIANT"
BUNDLE="$BUILD_DIR/pyinstaller-$VARIANT/dist/grok-desktop"
STAGE="$BUILD_DIR/deb-$VARIANT"
META="$ROOT/packaging/linux/deb_meta.py"
export PIP_DISABLE_PIP_VERSION_CHECK=1

case "$VARIANT" in cpu|cuda) ;; *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 2;; esac
started=$SECONDS
step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - started)); }

make_venv() {
    # A clean venv (no system site-packages), so only what the app needs can be bundled.
    local stamp="$VENV/.grok-desktop-stamp"
    local want
    want="$(cat "$ROOT/pyproject.toml" "$ROOT/packaging/requirements-build.txt"; echo "$TORCH_SPEC $TORCH_PIP_ARGS")"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "build venv up to date: $VENV"; return
    fi
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of pip options
    "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" $TORCH_PIP_ARGS
    "$VENV/bin/python" - "$ROOT/pyproject.toml" > "$BUILD_DIR/runtime-requirements.txt" <<'PY'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
PY
    "$VENV/bin/python" -m pip install -q -r "$BUILD_DIR/runtime-requirements.txt" \
        -r "$ROOT/packaging/requirements-build.txt"
    printf '%s' "$want" > "$stamp"
}

freeze() {
    # PyInstaller reuses its analysis in work/ when nothing it analysed changed (a changed
    # bundle_config filter only re-collects); CLEAN=1 starts from nothing
    rm -rf "$BUILD_DIR/pyinstaller-$VARIANT/dist"
    [[ "${CLEAN:-0}" == 1 ]] && rm -rf "$BUILD_DIR/pyinstaller-$VARIANT"
    "$VENV/bin/pyinstaller" --noconfirm --log-level WARN \
        --distpath "$BUILD_DIR/pyinstaller-$VARIANT/dist" \
        --workpath "$BUILD_DIR/pyinstaller-$VARIANT/work" \
        "$ROOT/packaging/pyinstaller/grok-desktop.spec"
}

smoke_bundle() {
    local home; home="$(mktemp -d)"
    "$BUNDLE/grok-desktop" --version
    GROK_DESKTOP_HOME="$home" "$BUNDLE/grok-desktop" generate --demo --prompt hi \
        --max-tokens 8 --json > "$home/out.json"
    "$VENV/bin/python" -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['completion_tokens'] > 0, d" "$home/out.json"
    echo "bundle runs the demo model"
    rm -rf "$home"
}

stage_tree() {
    rm -rf "$STAGE"
    mkdir -p "$STAGE/DEBIAN" "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/usr/share/applications" \
        "$STAGE/usr/share/doc/grok-desktop" "$STAGE/usr/share/lintian/overrides"
    cp -a "$BUNDLE" "$STAGE/opt/grok-desktop"
    ln -s /opt/grok-desktop/grok-desktop "$STAGE/usr/bin/grok-desktop"
    install -m 644 "$ROOT/resources/grok-desktop.desktop" "$STAGE/usr/share/applications/"
    local size dir
    for size in 16 24 32 48 64 128 256 512; do
        dir="$STAGE/usr/share/icons/hicolor/${size}x${size}/apps"
        mkdir -p "$dir"
        install -m 644 "$ROOT/resources/icons/grok-desktop-$size.png" "$dir/grok-desktop.png"
    done
    mkdir -p "$STAGE/usr/share/icons/hicolor/scalable/apps"
    install -m 644 "$ROOT/resources/icons/grok-desktop.svg" "$STAGE/usr/share/icons/hicolor/scalable/apps/"
    install -m 644 "$ROOT/packaging/linux/copyright" "$STAGE/usr/share/doc/grok-desktop/copyright"
    install -m 644 "$ROOT/packaging/linux/lintian-overrides" "$STAGE/usr/share/lintian/overrides/grok-desktop"
    "$PYTHON" "$META" changelog --date "$(date -R ${SOURCE_DATE_EPOCH:+-d @$SOURCE_DATE_EPOCH})" \
        | gzip -9n > "$STAGE/usr/share/doc/grok-desktop/changelog.gz"
    # wheels ship some license texts and shared libraries executable; Debian policy says 644
    find "$STAGE/opt" -type f \( -path '*.dist-info/*' -o -name '*.so' -o -name '*.so.*' \) \
        -exec chmod 644 {} +
    # no maintainer scripts: dpkg triggers of desktop-file-utils and the icon cache pick up
    # /usr/share/applications and /usr/share/icons/hicolor on install and removal
    find "$STAGE" -type d -exec chmod 755 {} +
}

shlib_depends() {
    # Depends from what the bundle really loads: bundle_libs.py walks DT_NEEDED from the
    # executables, Python extension modules and Qt plugins through the bundle, fails on bundled
    # libraries nothing loads (their needs would leak into Depends) and prints which system
    # libraries are needed and which package holds each (dpkg -S); Debian's dpkg-shlibdeps then
    # turns the system libraries those files link against into versioned package names.
    # Libraries inside the bundle are private (-l). The static Qt runtime list is added by
    # deb_meta.py (QT_RUNTIME_PACKAGES).
    local work="$BUILD_DIR/shlibdeps-$VARIANT" libdirs=() elves=()
    rm -rf "$work"; mkdir -p "$work/debian"
    printf 'Source: grok-desktop\n\nPackage: grok-desktop\nArchitecture: any\n' > "$work/debian/control"
    "$PYTHON" "$ROOT/packaging/linux/bundle_libs.py" "$STAGE/opt/grok-desktop" \
        --elves "$work/elves.txt" --report >&2
    mapfile -t elves < "$work/elves.txt"
    mapfile -t libdirs < <(find "$STAGE/opt" -name '*.so*' -type f -printf '%h\n' | sort -u)
    (cd "$work" && dpkg-shlibdeps -O --ignore-missing-info --warnings=0 \
        "${libdirs[@]/#/-l}" "${elves[@]}" 2> "$work/errors.log") | sed -n 's/^shlibs:Depends=//p'
    if grep -q "error:" "$work/errors.log"; then
        grep "error:" "$work/errors.log" | head -5 >&2
        echo "install the missing system libraries above (see packaging/README.md)" >&2; return 1
    fi
}

build_deb() {
    local depends installed version arch out
    depends="$(shlib_depends)" || exit 1
    [[ -n "$depends" ]] || { echo "dpkg-shlibdeps found no dependencies" >&2; exit 1; }
    installed="$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)"
    arch="$(dpkg --print-architecture)"
    "$PYTHON" "$META" control --variant "$VARIANT" --installed-size "$installed" \
        --depends "$depends" --arch "$arch" > "$STAGE/DEBIAN/control"
    version="$("$PYTHON" "$META" version)"
    mkdir -p "$DIST_DIR"
    out="$DIST_DIR/grok-desktop_${version}_${arch}-${VARIANT}.deb"
    # (this runs inside $(...), where bash does not apply `set -e`: check each step by hand)
    dpkg-deb --root-owner-group -Zxz -z"$XZ_LEVEL" --build "$STAGE" "$out" >&2 \
        || { rm -f "$out"; echo "dpkg-deb failed" >&2; exit 1; }
    echo "$out"
}

check_tools() {
    local tool
    for tool in dpkg-deb dpkg-shlibdeps readelf; do
        command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install dpkg-dev" >&2; exit 2; }
    done
    # PyInstaller bundles libpython, so the interpreter must be built with --enable-shared
    # (Debian's python3 and pyenv's default builds are; some custom builds are not)
    "$PYTHON" -c 'import sys, sysconfig; sys.exit(sys.version_info < (3, 11) or not sysconfig.get_config_var("Py_ENABLE_SHARED"))' \
        || { echo "$PYTHON must be Python 3.11+ built with a shared libpython" >&2; exit 2; }
}

mkdir -p "$BUILD_DIR"
check_tools
step "build venv ($VARIANT)"; make_venv
if [[ "${REUSE_BUNDLE:-0}" == 1 && -x "$BUNDLE/grok-desktop" ]]; then
    step "PyInstaller bundle: reusing $BUNDLE (REUSE_BUNDLE=1)"
else
    step "PyInstaller bundle"; freeze
fi
step "smoke test of the bundle"; smoke_bundle
step "stage the package tree"; stage_tree
step "dpkg-deb"; deb="$(build_deb | tail -n1)"
[[ -s "$deb" ]] || { echo "no package was built" >&2; exit 1; }
step "done"
cat "$STAGE/DEBIAN/control"
printf '\nbuilt %s: %s MB, installed %s MB, in %d s\n' "$deb" \
    "$(( $(stat -c %s "$deb") / 1048576 ))" "$(( $(du -sk "$STAGE/opt" | cut -f1) / 1024 ))" \
    $((SECONDS - started))
