"""Light and dark themes: the colour palettes, the stylesheet, and the app icon.

The stylesheet is one template (`resources/themes/app.qss`) with `$name` placeholders filled
from a `Palette`; "system" follows the desktop's colour scheme. Widgets that draw HTML (code
highlighting) ask `current_palette()` for their colours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from string import Template
from typing import cast

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import (
    QColor,
    QFont,
    QGuiApplication,
    QIcon,
    QPainter,
    QPainterPath,
    QPalette,
    QPixmap,
)
from PySide6.QtWidgets import QApplication, QStyleFactory

from app import paths


@dataclass(frozen=True)
class Palette:
    name: str
    window: str  # transcript background
    surface: str  # sidebar, status bar
    raised: str  # inputs, cards
    hover: str
    selected: str
    border: str
    text: str
    muted: str
    accent: str
    accent_hover: str
    accent_text: str
    user_bubble: str
    code_bg: str
    code_header: str
    danger: str
    banner_bg: str
    banner_border: str
    info_bg: str
    # syntax colours
    keyword: str
    string: str
    comment: str
    number: str
    function: str


LIGHT = Palette(
    name="light", window="#ffffff", surface="#f6f7f9", raised="#ffffff", hover="#eceef2",
    selected="#e3e7ef", border="#e2e5ea", text="#1f2328", muted="#6a717d", accent="#2f5fd0",
    accent_hover="#264fb0", accent_text="#ffffff", user_bubble="#eef1f6", code_bg="#f6f8fa",
    code_header="#eceff3", danger="#c4362c", banner_bg="#fdf0ef", banner_border="#f1c7c3",
    info_bg="#eef3fd", keyword="#8839c6", string="#2c7a3f", comment="#7b8490", number="#b45a0a",
    function="#2f5fd0",
)

DARK = Palette(
    name="dark", window="#1c1d20", surface="#151618", raised="#25272b", hover="#2a2c31",
    selected="#32353b", border="#2f3237", text="#e4e6ea", muted="#959ba5", accent="#6f9cf6",
    accent_hover="#86acf8", accent_text="#0f1320", user_bubble="#2a2d33", code_bg="#131417",
    code_header="#1f2125", danger="#f07b72", banner_bg="#3a2120", banner_border="#5c302d",
    info_bg="#1f2a40", keyword="#c792ea", string="#a5d6a7", comment="#7f8794", number="#f7b267",
    function="#82aaff",
)

_current: Palette = LIGHT


def current_palette() -> Palette:
    return _current


def resolve(choice: str) -> Palette:
    """"light", "dark", or "system" (the desktop's scheme; light when it does not say)."""
    if choice == "dark":
        return DARK
    if choice == "light":
        return LIGHT
    # PySide6 types instance() as QCoreApplication (the GUI always runs a QApplication)
    app = cast("QGuiApplication | None", QGuiApplication.instance())
    scheme = app.styleHints().colorScheme() if app is not None else Qt.ColorScheme.Unknown
    return DARK if scheme == Qt.ColorScheme.Dark else LIGHT


def apply_theme(app: QApplication, choice: str) -> Palette:
    """Style the whole app: Fusion, a matching QPalette, and the stylesheet."""
    global _current
    palette = resolve(choice)
    _current = palette
    app.setStyle(QStyleFactory.create("Fusion"))
    app.setPalette(_qpalette(palette))
    app.setStyleSheet(stylesheet(palette, app.font()))
    return palette


def stylesheet(palette: Palette, font: QFont) -> str:
    template = (paths.resources_dir() / "themes" / "app.qss").read_text(encoding="utf-8")
    size = font.pointSizeF() if font.pointSizeF() > 0 else 10.0
    values = asdict(palette) | {"font_pt": f"{size:.1f}", "small_pt": f"{size * 0.88:.1f}",
                                "title_pt": f"{size * 1.9:.1f}"}
    return Template(template).substitute(values)


def _qpalette(p: Palette) -> QPalette:
    pal = QPalette()
    roles = {
        QPalette.ColorRole.Window: p.surface, QPalette.ColorRole.WindowText: p.text,
        QPalette.ColorRole.Base: p.raised, QPalette.ColorRole.AlternateBase: p.surface,
        QPalette.ColorRole.Text: p.text, QPalette.ColorRole.Button: p.raised,
        QPalette.ColorRole.ButtonText: p.text, QPalette.ColorRole.Highlight: p.accent,
        QPalette.ColorRole.HighlightedText: p.accent_text, QPalette.ColorRole.ToolTipBase:
        p.raised, QPalette.ColorRole.ToolTipText: p.text, QPalette.ColorRole.PlaceholderText:
        p.muted, QPalette.ColorRole.Link: p.accent, QPalette.ColorRole.Mid: p.border,
    }
    for role, color in roles.items():
        pal.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText,
                 QPalette.ColorRole.WindowText):
        pal.setColor(QPalette.ColorGroup.Disabled, role, QColor(p.muted))
    return pal


def app_icon() -> QIcon:
    """The app icon: the PNGs rendered from resources/icons/grok-desktop.svg, the same files
    the installers and the desktop menu use (packaging/make_icons.py writes them)."""
    icon = QIcon()
    for path in sorted((paths.resources_dir() / "icons").glob("grok-desktop-*.png")):
        icon.addFile(str(path))
    if icon.isNull():  # a checkout without the icon files: draw a stand-in
        for size in (16, 32, 64, 256):
            icon.addPixmap(_icon_pixmap(size))
    return icon


def _icon_pixmap(size: int) -> QPixmap:
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pix)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    tile = QPainterPath()
    tile.addRoundedRect(QRectF(0, 0, size, size), size * 0.22, size * 0.22)
    painter.fillPath(tile, QColor("#16181d"))
    font = QFont()
    font.setBold(True)
    font.setPixelSize(int(size * 0.62))
    painter.setFont(font)
    painter.setPen(QColor("#f2f4f8"))
    painter.drawText(QRectF(0, -size * 0.02, size, size), Qt.AlignmentFlag.AlignCenter, "G")
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor("#6f9cf6"))
    dot = size * 0.13
    painter.drawEllipse(QRectF(size * 0.72, size * 0.15, dot, dot))
    painter.end()
    return pix
