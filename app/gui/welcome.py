"""The first-run view: choose the Grok-2 folder (checked at once) or try the tiny demo model."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.theme import app_icon
from app.settings import FolderCheck, check_model_folder


def _label(text: str, name: str, parent: QWidget, wrap: bool = True) -> QLabel:
    label = QLabel(text, parent)
    label.setObjectName(name)
    label.setWordWrap(wrap)
    return label


class WelcomeView(QWidget):
    folder_chosen = Signal(str)  # a folder that passed the check
    demo_requested = Signal()
    download_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Welcome")
        self.check: FolderCheck | None = None
        icon = QLabel(self)
        icon.setPixmap(app_icon().pixmap(64, 64))
        icon.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        title = _label("Welcome to Grok Desktop", "WelcomeTitle", self)
        title.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        intro = _label("Chat with xAI's open-weights Grok-2 on this computer. Nothing you type "
                       "leaves it.", "WelcomeText", self)
        intro.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        cards = QHBoxLayout()
        cards.setSpacing(16)
        cards.addWidget(self._grok_card(), 1)
        cards.addWidget(self._demo_card(), 1)
        column = QWidget(self)
        column.setMaximumWidth(720)
        column.setMinimumWidth(420)
        layout = QVBoxLayout(column)
        layout.setSpacing(14)
        layout.addWidget(icon)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addSpacing(18)
        layout.addLayout(cards)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(column)
        row.addStretch(1)
        outer = QVBoxLayout(self)
        outer.addStretch(2)
        outer.addLayout(row)
        outer.addStretch(3)

    def _card(self, title: str, text: str) -> tuple[QFrame, QVBoxLayout]:
        card = QFrame(self)
        card.setObjectName("WelcomeCard")
        layout = QVBoxLayout(card)
        layout.setContentsMargins(20, 18, 20, 18)
        layout.setSpacing(10)
        layout.addWidget(_label(title, "WelcomeCardTitle", card))
        layout.addWidget(_label(text, "WelcomeText", card))
        layout.addStretch(1)
        return card, layout

    def _grok_card(self) -> QFrame:
        card, layout = self._card(
            "Use Grok-2",
            "Download it here (about 500 GB, resumable, verified), or point to the folder you "
            "downloaded with hf download xai-org/grok-2 (config.json, tokenizer.tok.json and "
            "the .safetensors files).")
        self.folder_result = _label("", "FolderCheck", card)
        self.folder_result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.folder_result.hide()
        self.choose_button = QPushButton("Choose Grok-2 folder…", card)
        self.choose_button.setProperty("primary", True)
        self.choose_button.setAccessibleName("Choose the Grok-2 folder")
        self.choose_button.clicked.connect(self._browse)
        self.download_button = QPushButton("Download Grok-2…", card)
        self.download_button.setAccessibleName("Download Grok-2 from the Hugging Face Hub")
        self.download_button.clicked.connect(self.download_requested)
        layout.addWidget(self.folder_result)
        buttons = QHBoxLayout()  # side by side: the first view keeps its height
        buttons.addWidget(self.choose_button)
        buttons.addWidget(self.download_button)
        layout.addLayout(buttons)
        return card

    def _demo_card(self) -> QFrame:
        card, layout = self._card(
            "Try the demo model",
            "A tiny model for trying the app, trained on a few pages of sample text. It loads "
            "in seconds and runs anywhere, but it is not Grok-2: its replies are not meaningful.")
        self.demo_button = QPushButton("Start with the demo model", card)
        self.demo_button.setAccessibleName("Try the built-in demo model (a tiny model, not Grok-2)")
        self.demo_button.clicked.connect(self.demo_requested)
        layout.addWidget(self.demo_button)
        return card

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose the Grok-2 folder")
        if folder:
            self.choose_folder(folder)

    def choose_folder(self, folder: str) -> FolderCheck:
        """Check `folder` at once; a good one is announced, a bad one says what is missing."""
        check = self.check = check_model_folder(folder)
        self.folder_result.setText(check.summary())
        self.folder_result.setProperty("ok", check.ok)
        self.folder_result.style().unpolish(self.folder_result)
        self.folder_result.style().polish(self.folder_result)
        self.folder_result.show()
        if check.ok:
            self.folder_chosen.emit(check.folder)
        return check
