"""Settings panels for where the model runs: the remote server (with "Test connection") and
the local API server switch. Used by the Settings dialog; they edit fields of `Settings`.
"""

from __future__ import annotations

import asyncio

from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.api.guard import normalize_origin
from app.backends import ConnectionReport, RemoteConfig, check_connection
from app.gui.tasks import spawn
from app.settings import Settings

FIELD_WIDTH = 200  # spin boxes: a number does not need the whole row
LABEL_WIDTH = 130  # the Model tab's forms line up (the backend row and each backend's page)


def remote_config(s: Settings) -> RemoteConfig:
    """The worker's RemoteConfig from the settings."""
    return RemoteConfig(base_url=s.remote_url, model=s.remote_model, api_key=s.remote_api_key,
                        connect_timeout_s=s.remote_connect_timeout_s,
                        read_timeout_s=s.remote_read_timeout_s)


def model_key(s: Settings) -> tuple:
    """The settings that need the model loaded again when they change."""
    return (s.backend, s.model_folder, s.device, s.quantization, s.gpu_memory_gb,
            s.cpu_memory_gb, s.context_tokens, s.remote_url, s.remote_model, s.remote_api_key,
            s.remote_connect_timeout_s, s.remote_read_timeout_s)


def api_key(s: Settings) -> tuple:
    """The settings of the API server switch."""
    return (s.api_server_enabled, s.api_server_port, s.api_server_key, s.api_server_allow_remote,
            tuple(s.api_cors_origins))


def _seconds(value: float, high: float, name: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.5, high)
    box.setDecimals(1)
    box.setSuffix(" s")
    box.setValue(value)
    box.setAccessibleName(name)
    box.setMaximumWidth(FIELD_WIDTH)
    return box


def align_labels(form: QFormLayout, width: int = LABEL_WIDTH) -> None:
    """Give every label of `form` the same width, so stacked forms line up."""
    for row in range(form.rowCount()):
        item = form.itemAt(row, QFormLayout.ItemRole.LabelRole)
        label = item.widget() if item is not None else None
        if label is not None:
            label.setFixedWidth(width)


def _note(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setObjectName("SettingsNote")
    return label


class RemotePanel(QWidget):
    """URL, model name, key and timeouts of an OpenAI-compatible server (SGLang, vLLM, our
    `serve`), and a button that checks them off the GUI thread."""

    def __init__(self, s: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.url = QLineEdit(s.remote_url)
        self.url.setPlaceholderText("http://gpu-server:30000")
        self.url.setAccessibleName("Remote server URL")
        self.model = QLineEdit(s.remote_model)
        self.model.setPlaceholderText("empty: the first model the server lists")
        self.model.setAccessibleName("Remote model name")
        self.key = QLineEdit(s.remote_api_key)
        self.key.setEchoMode(QLineEdit.EchoMode.Password)
        self.key.setPlaceholderText("only if the server was started with --api-key")
        self.key.setAccessibleName("Remote API key")
        self.connect_timeout = _seconds(s.remote_connect_timeout_s, 600, "Connect timeout")
        self.read_timeout = _seconds(s.remote_read_timeout_s, 3600, "Read timeout")
        self.test = QPushButton("Test connection")
        self.test.setAccessibleName("Test the connection to the remote server")
        self.test.clicked.connect(lambda: spawn(self.test_connection()))
        self.result = QLabel()
        self.result.setObjectName("FolderCheck")
        self.result.setWordWrap(True)
        self.result.setAccessibleName("Connection test result")
        row = QHBoxLayout()
        row.addWidget(self.test)
        row.addWidget(self.result, 1)
        form.addRow("Server URL", self.url)
        form.addRow("Model name", self.model)
        form.addRow("API key", self.key)
        form.addRow("Connect timeout", self.connect_timeout)
        form.addRow("Read timeout", self.read_timeout)
        form.addRow("", row)
        form.addRow("", _note("The read timeout is the longest silence allowed while a reply "
                              "streams (a long prompt's prefill). A reply cut short is kept "
                              "and can be continued."))
        self.report: ConnectionReport | None = None
        align_labels(form)

    def config(self) -> RemoteConfig:
        return RemoteConfig(base_url=self.url.text().strip(), model=self.model.text().strip(),
                            api_key=self.key.text().strip(),
                            connect_timeout_s=self.connect_timeout.value(),
                            read_timeout_s=self.read_timeout.value())

    async def test_connection(self) -> ConnectionReport:
        """Run the check on a worker thread; show its one-line message."""
        self.test.setEnabled(False)
        self._show("Testing…", None)
        try:
            report = await asyncio.to_thread(check_connection, self.config())
        finally:
            self.test.setEnabled(True)
        self.report = report
        self._show(report.message, report.ok)
        return report

    def _show(self, text: str, ok: bool | None) -> None:
        self.result.setText(text)
        self.result.setProperty("ok", ok)
        self.result.style().unpolish(self.result)
        self.result.style().polish(self.result)

    def values(self) -> dict:
        c = self.config()
        return {"remote_url": c.base_url, "remote_model": c.model, "remote_api_key": c.api_key,
                "remote_connect_timeout_s": c.connect_timeout_s,
                "remote_read_timeout_s": c.read_timeout_s}


class ApiServerPanel(QWidget):
    """The on/off switch for serving the loaded local model to other programs."""

    def __init__(self, s: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        column = QVBoxLayout(self)
        form = QFormLayout()
        column.addLayout(form)
        self.enabled = QCheckBox("Serve the loaded model as an OpenAI-compatible API")
        self.enabled.setChecked(s.api_server_enabled)
        self.enabled.setAccessibleName("API server on or off")
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(s.api_server_port or 1234)
        self.port.setAccessibleName("API server port")
        self.port.setMaximumWidth(FIELD_WIDTH)
        self.key = QLineEdit(s.api_server_key)
        self.key.setEchoMode(QLineEdit.EchoMode.Password)
        self.key.setPlaceholderText("optional on this computer; required for other machines")
        self.key.setAccessibleName("API server key")
        self.allow_remote = QCheckBox("Let other machines on the network connect")
        self.allow_remote.setChecked(s.api_server_allow_remote and bool(s.api_server_key))
        self.allow_remote.setAccessibleName("Allow other machines")
        self.origins = QLineEdit(" ".join(s.api_cors_origins))
        self.origins.setPlaceholderText("none: browsers are refused (e.g. http://localhost:3000)")
        self.origins.setAccessibleName("Web pages allowed to use the API server")
        self.origins_note = _note("")
        self.origins.textChanged.connect(self._check_origins)
        self.why = _note("")
        self.key.textChanged.connect(self._update)
        self.enabled.toggled.connect(self._update)
        form.addRow(self.enabled)
        form.addRow("Port", self.port)
        form.addRow("API key", self.key)
        form.addRow("", self.allow_remote)
        form.addRow("Web pages", self.origins)
        form.addRow("", self.origins_note)
        column.addSpacing(8)
        column.addWidget(self.why)
        column.addSpacing(8)
        column.addWidget(_note("Editors and scripts use http://127.0.0.1:PORT/v1 (GET /v1/models, "
                              "POST /v1/chat/completions, /v1/completions), sending "
                              "'Authorization: Bearer KEY' when a key is set. Requests queue "
                              "with your own chats. The server only runs with the local "
                              "backend: with a remote server, point your tools at it directly."))
        column.addStretch(1)
        self._update()
        self._check_origins()

    def _update(self) -> None:
        has_key = bool(self.key.text().strip())
        self.allow_remote.setEnabled(has_key)
        if not has_key:
            self.allow_remote.setChecked(False)
        self.why.setText(
            "Other machines can connect only with a key: without one, anyone on your network "
            "could use the model (and your GPU). Without the box ticked, the server listens "
            "on 127.0.0.1, this computer only." if not has_key else
            "With the box ticked the server listens on every address (plain HTTP: use it on a "
            "network you trust, or tunnel over SSH).")

    def values(self) -> dict:
        key = self.key.text().strip()
        return {"api_server_enabled": self.enabled.isChecked(),
                "api_server_port": self.port.value(), "api_server_key": key,
                "api_server_allow_remote": self.allow_remote.isChecked() and bool(key),
                "api_cors_origins": self._origins()[0]}

    def _origins(self) -> tuple[list[str], list[str]]:
        """The allowed origins typed (space or comma separated): (valid normalised, invalid)."""
        good, bad = [], []
        for text in self.origins.text().replace(",", " ").split():
            try:
                good.append(normalize_origin(text))
            except ValueError:
                bad.append(text)
        return good, bad

    def _check_origins(self) -> None:
        bad = self._origins()[1]
        self.origins_note.setText(
            f"Not a web origin (not saved): {', '.join(bad)}. Write scheme://host[:port], "
            "e.g. http://localhost:3000." if bad else
            "Pages from these origins may call the server from a browser (CORS); any other "
            "page is refused.")
