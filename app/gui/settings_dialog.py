"""The Settings dialog: backend (a Grok-2 folder, checked when chosen, or a remote server with
"Test connection"), memory budgets, quantization and context with the planner's placement and
speed bound (updated live), the local API server switch, sampling, system prompts (default and this conversation's), theme, and where data lives.

It edits a copy: `edited()` gives the new `Settings` and the conversation's system prompt.
"""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import QUrl, Signal
from PySide6.QtGui import QDesktopServices, QFontDatabase
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app import paths
from app.gui.settings_backend import FIELD_WIDTH, ApiServerPanel, RemotePanel, align_labels
from app.messages import GenerationParams
from app.placement import preview
from app.settings import DEVICES, QUANTIZATIONS, THEMES, Settings, check_model_folder

BACKEND_LABELS = {"local": "This computer: a Grok-2 folder",
                  "remote": "A remote server (SGLang, vLLM or another Grok Desktop)"}


def _spin(low: float, high: float, step: float, value: float, decimals: int = 2,
          name: str = "") -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setDecimals(decimals)
    box.setValue(value)
    box.setAccessibleName(name)
    return box


def _int_spin(low: int, high: int, value: int, name: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    box.setAccessibleName(name)
    return box


def _combo(choices: tuple[str, ...], value: str, name: str) -> QComboBox:
    box = QComboBox()
    box.addItems(list(choices))
    box.setCurrentText(value)
    box.setAccessibleName(name)
    return box


class SettingsDialog(QDialog):
    download_requested = Signal()  # Settings > Model: "Download Grok-2…"

    def __init__(self, settings: Settings, conversation_prompt: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setAccessibleName("Settings")
        self._settings = settings
        self._conversation_prompt = conversation_prompt
        tabs = QTabWidget(self)
        tabs.addTab(self._model_tab(settings), "Model")
        tabs.addTab(self._memory_tab(settings), "Memory and speed")
        self.api = ApiServerPanel(settings)
        tabs.addTab(self.api, "API server")
        tabs.addTab(self._sampling_tab(settings.sampling), "Generation")
        tabs.addTab(self._prompt_tab(settings, conversation_prompt), "System prompt")
        tabs.addTab(self._appearance_tab(settings), "Appearance")
        tabs.addTab(self._data_tab(), "Data")
        self.tabs = tabs
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(tabs)
        layout.addWidget(buttons)
        self.resize(760, 600)
        self.check_folder()
        self._update_placement()

    # ---- tabs -----------------------------------------------------------------------------

    def _model_tab(self, s: Settings) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        form = QFormLayout()
        self.backend = QComboBox()
        for key, label in BACKEND_LABELS.items():
            self.backend.addItem(label, key)
        self.backend.setCurrentIndex(list(BACKEND_LABELS).index(s.backend))
        self.backend.setAccessibleName("Backend")
        form.addRow("Backend", self.backend)
        align_labels(form)
        layout.addLayout(form)
        self.backend_pages = QStackedWidget()
        self.backend_pages.addWidget(self._local_page(s))
        self.remote = RemotePanel(s)
        self.backend_pages.addWidget(self.remote)
        self.backend.currentIndexChanged.connect(self.backend_pages.setCurrentIndex)
        self.backend_pages.setCurrentIndex(self.backend.currentIndex())
        layout.addWidget(self.backend_pages)
        layout.addStretch(1)
        return page

    def _local_page(self, s: Settings) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.folder = QLineEdit(s.model_folder)
        self.folder.setAccessibleName("Grok-2 folder")
        self.folder.setPlaceholderText("The folder with config.json and the .safetensors files")
        self.folder.editingFinished.connect(self.check_folder)
        self.folder.editingFinished.connect(self._update_placement)
        browse = QPushButton("Browse…")
        browse.setAccessibleName("Browse for the Grok-2 folder")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        form.addRow("Grok-2 folder", row)
        self.folder_status = QLabel()
        self.folder_status.setObjectName("FolderCheck")
        self.folder_status.setWordWrap(True)
        self.folder_status.setAccessibleName("Folder check result")
        form.addRow("", self.folder_status)
        download = QPushButton("Download Grok-2…")
        download.setAccessibleName("Download Grok-2 from the Hugging Face Hub")
        download.clicked.connect(self.download_requested)
        form.addRow("", download)
        align_labels(form)
        return page

    def _memory_tab(self, s: Settings) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        form = QFormLayout()
        self.device = _combo(DEVICES, s.device, "Device")
        self.quant = _combo(QUANTIZATIONS, s.quantization, "Quantization")
        self.gpu_budget = _spin(0, 4096, 1, s.gpu_memory_gb, 0, "GPU memory budget in GB")
        self.gpu_budget.setSpecialValueText("all of it")
        self.gpu_budget.setSuffix(" GB")
        self.cpu_budget = _spin(0, 8192, 1, s.cpu_memory_gb, 0, "RAM budget in GB")
        self.cpu_budget.setSpecialValueText("all of it")
        self.cpu_budget.setSuffix(" GB")
        self.context = _int_spin(256, 131072, s.context_tokens, "Context in tokens")
        self.context.setSingleStep(1024)
        self.context.setSuffix(" tokens")
        form.addRow("Device", self.device)
        form.addRow("Quantization", self.quant)
        form.addRow("GPU memory", self.gpu_budget)
        form.addRow("RAM", self.cpu_budget)
        form.addRow("Context", self.context)
        layout.addLayout(form)
        self.placement = QLabel()
        self.placement.setWordWrap(True)
        self.placement.setObjectName("FolderCheck")
        self.placement.setAccessibleName("Placement")
        layout.addWidget(self.placement)
        self.plan_detail = QPlainTextEdit()
        self.plan_detail.setReadOnly(True)
        self.plan_detail.setAccessibleName("Placement plan")
        self.plan_detail.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.plan_detail.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        layout.addWidget(self.plan_detail, 1000)
        layout.addStretch(1)  # keeps the headline at the top while the plan is hidden
        for box in (self.gpu_budget, self.cpu_budget, self.context):
            box.setMaximumWidth(FIELD_WIDTH)
        for box in (self.gpu_budget, self.cpu_budget):
            box.valueChanged.connect(self._update_placement)
        self.context.valueChanged.connect(self._update_placement)
        self.quant.currentTextChanged.connect(self._update_placement)
        self.device.currentTextChanged.connect(self._update_placement)
        return page

    def _sampling_tab(self, p: GenerationParams) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.temperature = _spin(0, 2, 0.05, p.temperature, name="Temperature")
        self.top_p = _spin(0.01, 1, 0.01, p.top_p, name="Top-p")
        self.top_k = _int_spin(0, 1000, p.top_k, "Top-k (0 is off)")
        self.min_p = _spin(0, 0.99, 0.01, p.min_p, name="Min-p")
        self.repetition = _spin(0.5, 2, 0.01, p.repetition_penalty, name="Repetition penalty")
        self.max_tokens = _int_spin(1, 131072, p.max_tokens, "Max tokens")
        self.random_seed = QCheckBox("Random for each reply")
        self.random_seed.setChecked(p.seed is None)
        self.seed = _int_spin(0, 2**31 - 1, p.seed or 0, "Seed")
        self.seed.setEnabled(p.seed is not None)
        self.random_seed.toggled.connect(lambda on: self.seed.setEnabled(not on))
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed)
        seed_row.addWidget(self.random_seed)
        form.addRow("Temperature (0 is greedy)", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Top-k (0 is off)", self.top_k)
        form.addRow("Min-p (0 is off)", self.min_p)
        form.addRow("Repetition penalty", self.repetition)
        form.addRow("Max tokens per reply", self.max_tokens)
        form.addRow("Seed", seed_row)
        return page

    def _prompt_tab(self, s: Settings, conversation_prompt: str | None) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(QLabel("Default system prompt for new chats"))
        self.system_prompt = QPlainTextEdit(s.system_prompt)
        self.system_prompt.setAccessibleName("Default system prompt")
        self.system_prompt.setTabChangesFocus(True)
        layout.addWidget(self.system_prompt)
        label = QLabel("This conversation's system prompt" if conversation_prompt is not None
                       else "This conversation's system prompt (open a chat to set it)")
        layout.addWidget(label)
        self.conversation_prompt = QPlainTextEdit(conversation_prompt or "")
        self.conversation_prompt.setAccessibleName("This conversation's system prompt")
        self.conversation_prompt.setTabChangesFocus(True)
        self.conversation_prompt.setEnabled(conversation_prompt is not None)
        layout.addWidget(self.conversation_prompt)
        return page

    def _appearance_tab(self, s: Settings) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.theme = _combo(THEMES, s.theme, "Theme")
        form.addRow("Theme", self.theme)
        return page

    def _data_tab(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        places = (("Conversations", paths.database_path()), ("Settings", paths.settings_path()),
                  ("Logs", paths.log_dir()), ("Demo model", paths.demo_model_dir()))
        for name, path in places:
            row = QHBoxLayout()
            text = QLineEdit(str(path))
            text.setReadOnly(True)
            text.setAccessibleName(f"{name} location")
            folder = path if path.is_dir() else path.parent
            show = QPushButton("Open")
            show.setAccessibleName(f"Open the {name.lower()} folder")
            show.clicked.connect(lambda _=False, f=folder: QDesktopServices.openUrl(
                QUrl.fromLocalFile(str(f))))
            row.addWidget(text, 1)
            row.addWidget(show)
            form.addRow(name, row)
        note = QLabel("Set GROK_DESKTOP_HOME to keep everything in another folder.")
        note.setWordWrap(True)
        form.addRow("", note)
        return page

    # ---- behaviour ------------------------------------------------------------------------

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose the Grok-2 folder",
                                                  self.folder.text())
        if folder:
            self.folder.setText(folder)
            self.check_folder()
            self._update_placement()

    def check_folder(self) -> None:
        folder = self.folder.text().strip()
        if not folder:
            self.folder_status.setText("No folder chosen: the demo model is available from "
                                       "the welcome screen.")
            return
        check = check_model_folder(folder)
        self.folder_status.setText(check.summary())
        self.folder_status.setProperty("ok", check.ok)
        self.folder_status.style().unpolish(self.folder_status)
        self.folder_status.style().polish(self.folder_status)

    def _update_placement(self) -> None:
        """The planner's answer for the numbers on screen (pure arithmetic: live)."""
        result = preview(self._edited_settings())
        self.placement.setText(result.headline)
        self.placement.setProperty("ok", result.fits)
        self.placement.style().unpolish(self.placement)
        self.placement.style().polish(self.placement)
        self.plan_detail.setPlainText(result.detail)
        self.plan_detail.setVisible(bool(result.detail))

    def _edited_settings(self) -> Settings:
        return replace(
            self._settings, model_folder=self.folder.text().strip(),
            device=self.device.currentText(), quantization=self.quant.currentText(),
            gpu_memory_gb=self.gpu_budget.value(), cpu_memory_gb=self.cpu_budget.value(),
            context_tokens=self.context.value())

    def edited(self) -> tuple[Settings, str | None]:
        """The edited settings and this conversation's prompt (None when no chat is open)."""
        sampling = GenerationParams(
            temperature=self.temperature.value(), top_p=self.top_p.value(),
            top_k=self.top_k.value(), min_p=self.min_p.value(),
            repetition_penalty=self.repetition.value(), max_tokens=self.max_tokens.value(),
            seed=None if self.random_seed.isChecked() else self.seed.value())
        settings = replace(
            self._edited_settings(), backend=self.backend.currentData(),
            **self.remote.values(), **self.api.values(),
            sampling=sampling, system_prompt=self.system_prompt.toPlainText().strip(),
            theme=self.theme.currentText())
        prompt = None
        if self._conversation_prompt is not None:
            prompt = self.conversation_prompt.toPlainText().strip()
        return settings, prompt
