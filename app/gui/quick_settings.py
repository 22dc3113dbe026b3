"""The quick settings panel beside the chat (collapsible, not a dialog): temperature, top-p,
max tokens, the system prompt and the context policy of the open conversation.

Changes are applied as they are made (the system prompt when its box loses focus or after a
pause); "Use app defaults" clears the conversation's own settings. The panel only shows and
edits `ChatSettings`; the chat controller stores them with the conversation.
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.context import LABELS, POLICIES
from app.gui.chat import ChatSettings

PROMPT_DELAY_MS = 600


class QuickSettings(QFrame):
    changed = Signal(object)  # ChatSettings
    reset_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("QuickSettings")
        self.setAccessibleName("Chat settings")
        self.setMinimumWidth(230)
        self.setMaximumWidth(320)
        self._loading = False
        self._shown: ChatSettings | None = None
        title = QLabel("Chat settings", self)
        title.setObjectName("RoleLabel")
        note = QLabel("For this conversation; new chats start from Settings.", self)
        note.setObjectName("MessageMeta")
        note.setWordWrap(True)
        self.temperature = QDoubleSpinBox(self, decimals=2, minimum=0.0, maximum=2.0,
                                          singleStep=0.05)
        self.temperature.setAccessibleName("Temperature")
        self.top_p = QDoubleSpinBox(self, decimals=2, minimum=0.01, maximum=1.0, singleStep=0.05)
        self.top_p.setAccessibleName("Top-p")
        self.max_tokens = QSpinBox(self, minimum=1, maximum=131072, singleStep=64)
        self.max_tokens.setAccessibleName("Max tokens")
        self.policy = QComboBox(self)
        self.policy.setAccessibleName("Context policy")
        for key in POLICIES:
            self.policy.addItem(LABELS[key], key)
        self.system_prompt = QPlainTextEdit(self)
        self.system_prompt.setAccessibleName("System prompt")
        self.system_prompt.setPlaceholderText("No system prompt")
        self.system_prompt.setTabChangesFocus(True)
        self.reset = QPushButton("Use app defaults", self)
        self.reset.setProperty("flat", True)
        self.reset.clicked.connect(self.reset_requested)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Max tokens", self.max_tokens)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 12, 14, 12)
        layout.addWidget(title)
        layout.addWidget(note)
        layout.addLayout(form)
        layout.addWidget(QLabel("When the chat outgrows the context", self))
        layout.addWidget(self.policy)
        layout.addWidget(QLabel("System prompt", self))
        layout.addWidget(self.system_prompt, 1)
        layout.addWidget(self.reset)
        self._prompt_timer = QTimer(self, singleShot=True, interval=PROMPT_DELAY_MS)
        self._prompt_timer.timeout.connect(self._emit)
        for spin in (self.temperature, self.top_p, self.max_tokens):
            spin.valueChanged.connect(self._emit)
        self.policy.currentIndexChanged.connect(self._emit)
        self.system_prompt.textChanged.connect(self._prompt_timer.start)

    def show_settings(self, chosen: ChatSettings) -> None:
        """Fill the fields (without announcing a change)."""
        self._loading = True
        try:
            self._shown = chosen
            self.temperature.setValue(chosen.params.temperature)
            self.top_p.setValue(chosen.params.top_p)
            self.max_tokens.setValue(chosen.params.max_tokens)
            self.policy.setCurrentIndex(max(0, self.policy.findData(chosen.context_policy)))
            if self.system_prompt.toPlainText() != chosen.system_prompt:
                self.system_prompt.setPlainText(chosen.system_prompt)
            self._prompt_timer.stop()
        finally:
            self._loading = False

    def edited(self) -> ChatSettings | None:
        if self._shown is None:
            return None
        params = replace(self._shown.params, temperature=self.temperature.value(),
                         top_p=self.top_p.value(), max_tokens=self.max_tokens.value())
        return ChatSettings(params, self.system_prompt.toPlainText().strip(),
                            self.policy.currentData())

    def flush(self) -> None:
        """Apply a system prompt still waiting for its pause (before sending, closing)."""
        if self._prompt_timer.isActive():
            self._prompt_timer.stop()
            self._emit()

    def _emit(self) -> None:
        if self._loading:
            return
        chosen = self.edited()
        if chosen is not None and chosen != self._shown:
            self._shown = chosen
            self.changed.emit(chosen)
