"""What goes into the PyInstaller bundle: app metadata, data files, excludes, per-OS icons.

The spec (`grok-desktop.spec`) only wires these into PyInstaller's objects; keeping the choices
here lets `tests/test_packaging.py` check them without PyInstaller installed. Name, id and
version are read from `app/__init__.py`, the one place they are written.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "resources"
ICONS = RESOURCES / "icons"
LAUNCHER = Path(__file__).resolve().parent / "launcher.py"
ENTITLEMENTS = ROOT / "packaging" / "macos" / "entitlements.plist"

# reverse-DNS id for macOS (CFBundleIdentifier); never change it after a release
BUNDLE_ID = "org.grokdesktop.GrokDesktop"

# Python packages the app never imports but that torch, sympy or Qt hooks could drag in.
# triton only serves torch.compile, which the engine does not use (it is ~600 MB in CUDA builds).
EXCLUDES = [
    "tkinter", "IPython", "matplotlib", "scipy", "pandas", "PIL", "tensorboard",
    "torch.utils.tensorboard", "torchvision", "torchaudio", "triton", "huggingface_hub",
    "pytest", "setuptools", "pip",
]

# Distributions whose metadata (with their license files) is copied into the bundle, so the
# installed app carries the licenses of what it redistributes; absent ones are skipped.
LICENSED_DISTS = [
    "torch", "PySide6_Essentials", "shiboken6", "safetensors", "tokenizers", "platformdirs",
    "qasync", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "filelock", "fsspec",
    "typing_extensions", "numpy", "httpx", "httpx_sse", "httpcore", "h11", "certifi", "idna",
    "anyio", "sniffio", "numba", "llvmlite",
]

# Linux: folders of the distribution's own shared libraries. A library PyInstaller collected
# from one of these is left out of the bundle and taken from the user's system (the .deb's
# Depends name its package): the C++ runtime (a bundled libstdc++ older than the one Mesa's
# drivers were built against makes them fail to load, a known PyInstaller crash), X11/xcb,
# glib, fontconfig, freetype, dbus, OpenSSL, sqlite... These read the system's configuration
# (fonts.conf, GIO modules, X locale files) and get its security updates. What the bundle
# carries is what pip installed (torch, Qt from the PySide6 wheel, numpy's OpenBLAS...) and
# the Python runtime itself (libpython and its extension modules).
SYSTEM_LIB_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/")


def from_system(source: str, platform: str) -> bool:
    """Whether a collected binary (its path on the build machine) is a Linux distribution
    library that the installed app takes from the user's system instead of the bundle.
    libpython and anything under a Python installation (lib-dynload, site-packages) stay."""
    if not platform.startswith("linux"):
        return False
    path = source.replace("\\", "/")
    name = path.rsplit("/", 1)[-1]
    if name.startswith("libpython") or "/python3" in path or "-packages/" in path:
        return False
    return path.startswith(SYSTEM_LIB_DIRS)


# Imported only inside a function (httpx loads certifi when it makes its first TLS context),
# named so PyInstaller runs certifi's hook, which bundles its CA file (cacert.pem): without
# it, https:// to a remote server fails inside the frozen app.
HIDDEN_IMPORTS = ["certifi"]
# Packages that read data files next to their modules at run time and have no PyInstaller hook:
# ziamath/ziafont (the math fonts behind every rendered formula), latex2mathml (its symbol
# table). Without them math in a reply or an export fails only in the installed app.
PACKAGE_DATA = ["ziamath", "ziafont", "latex2mathml"]

# Bundle paths (as PyInstaller names them, "/"-separated) that are build-time only or tests:
# C++ headers and CMake files, static libraries, torch's test binaries and test .so files,
# every Qt translation except Qt's own base strings, and Qt's platform plugins for embedded
# devices without a desktop (eglfs, linuxfb, vnc, evdev input); xcb, wayland, offscreen and
# minimal stay.
DROP_PATTERNS = [
    "torch/include/*", "torch/share/*", "torch/bin/*", "torch/test/*", "*.a", "*.lib",
    "torch/lib/libtorchbind_test*", "torch/lib/libjitbackend_test*",
    "torch/lib/libbackend_with_compiler*", "torch/lib/libaoti_custom_ops*",
    "PySide6/Qt/translations/*",
    "PySide6/Qt/plugins/platforms/libqeglfs*", "PySide6/Qt/plugins/platforms/libqlinuxfb*",
    "PySide6/Qt/plugins/platforms/libqminimalegl*", "PySide6/Qt/plugins/platforms/libqvkkhr*",
    "PySide6/Qt/plugins/platforms/libqvnc*", "PySide6/Qt/plugins/egldeviceintegrations/*",
    "PySide6/Qt/plugins/generic/*", "PySide6/Qt/lib/libQt6EglF*", "libQt6EglF*",
    # Qt's GTK 3 theme plugin and the system libraries only it pulled in: it would load the
    # user's GTK against these older copies; without it Qt uses its own style and portals
    "PySide6/Qt/plugins/platformthemes/libqgtk3*", "libgdk_pixbuf-*", "libcairo*",
    "libpango*", "libatk-*", "libharfbuzz.so*", "libgraphite2.so*", "libfribidi.so*",
    "libthai.so*", "libdatrie.so*", "libpixman-*", "libjpeg.so.62*", "libbsd.so*", "libmd.so*",
    "libXau.so*", "libXdmcp.so*", "libXext.so*", "libXrender.so*", "libgtk-3.so*",
    "libgdk-3.so*", "libXcomposite.so*", "libXcursor.so*", "libXdamage.so*", "libXfixes.so*",
    "libXi.so*", "libXinerama.so*", "libXrandr.so*", "libatspi.so*", "libepoxy.so*",
    # numba's TBB threading layer needs libtbb.so.12, which is not bundled: numba then takes
    # its OpenMP layer (app/engine/cpu_int4.py)
    "numba/np/ufunc/tbbpool*",
]
# torch_shm_manager: `import torch` checks that it exists
KEEP_PATTERNS = ["PySide6/Qt/translations/qtbase_*", "torch/bin/torch_shm_manager"]


def _init_constants() -> dict[str, str]:
    """`__version__`, `APP_NAME` and `APP_ID` from app/__init__.py, without importing it."""
    tree = ast.parse((ROOT / "app" / "__init__.py").read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


_CONSTANTS = _init_constants()
VERSION: str = _CONSTANTS["__version__"]
APP_NAME: str = _CONSTANTS["APP_NAME"]
APP_ID: str = _CONSTANTS["APP_ID"]


def datas() -> list[tuple[str, str]]:
    """(source, destination folder) pairs: the whole resources/ tree becomes app/resources,
    where `app.paths.resources_dir()` looks first."""
    pairs = []
    for path in sorted(RESOURCES.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            dest = Path("app/resources") / path.parent.relative_to(RESOURCES)
            pairs.append((str(path), dest.as_posix()))
    return pairs


def app_modules() -> list[str]:
    """Every module of the `app` package; the CLI imports its commands by name at run time,
    so PyInstaller's import scan cannot see them."""
    names = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def keep(dest_name: str) -> bool:
    """Whether a collected file (its path inside the bundle) belongs in the installed app."""
    name = dest_name.replace("\\", "/")
    if any(fnmatch.fnmatch(name, p) for p in KEEP_PATTERNS):
        return True
    return not any(fnmatch.fnmatch(name, p) for p in DROP_PATTERNS)


def icon_file(platform: str) -> Path:
    """The icon the executable or bundle carries: .ico on Windows, .icns on macOS, PNG else."""
    if platform.startswith("win"):
        return ICONS / "grok-desktop.ico"
    if platform == "darwin":
        return ICONS / "grok-desktop.icns"
    return ICONS / "grok-desktop-256.png"


def win_version_numbers() -> tuple[int, int, int, int]:
    """`1.2.3` -> (1, 2, 3, 0) for the Windows version resource (pre-release tags dropped)."""
    parts = []
    for piece in VERSION.split(".")[:4]:
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts + [0] * (4 - len(parts)))  # type: ignore[return-value]


def info_plist() -> dict[str, object]:
    """Extra Info.plist keys for the macOS .app."""
    return {
        "CFBundleName": APP_NAME,
        "CFBundleDisplayName": APP_NAME,
        "CFBundleShortVersionString": VERSION,
        "CFBundleVersion": VERSION,
        "NSHighResolutionCapable": True,
        "NSRequiresAquaSystemAppearance": False,  # follow the system dark mode
        "LSApplicationCategoryType": "public.app-category.productivity",
        "NSHumanReadableCopyright": "Apache-2.0",
    }
