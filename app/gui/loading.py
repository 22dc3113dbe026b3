"""Loading a model: the progress banner (stage, amount, time left, Cancel) and the coroutine
that drives a `LoadModel` request through the worker."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from app.gui.status_bar import format_bytes
from app.messages import Failed, Finished, Loaded, ModelInfo, Progress
from app.worker import EngineWorker, EventStream, LoadModel


def describe_progress(event: Progress) -> str:
    amount = ""
    if event.total > 1_000_000:
        amount = f" · {format_bytes(event.done)} of {format_bytes(event.total)}"
    elif event.total > 1:
        amount = f" · {event.done} of {event.total}"
    left = ""
    if event.eta_s is not None and event.done > 0:
        left = f" · about {_duration(event.eta_s)} left"
    return f"{event.stage.capitalize()}{amount}{left}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class ProgressBanner(QFrame):
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ProgressBanner")
        self.title = QLabel(self)
        self.title.setObjectName("RoleLabel")
        self.detail = QLabel(self)
        self.bar = QProgressBar(self)
        self.bar.setTextVisible(False)
        self.bar.setAccessibleName("Loading progress")
        self.cancel = QPushButton("Cancel", self)
        self.cancel.setProperty("flat", True)
        self.cancel.setAccessibleName("Cancel loading")
        self.cancel.clicked.connect(self.cancel_requested)
        text = QWidget(self)
        column = QHBoxLayout(text)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.title)
        column.addWidget(self.detail, 1)
        row = QHBoxLayout(self)
        row.setContentsMargins(14, 6, 8, 6)
        row.addWidget(text, 2)
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel)
        self.hide()

    def start(self, title: str) -> None:
        self.title.setText(title)
        self.detail.setText("Starting…")
        self.bar.setRange(0, 0)  # busy until the first progress event
        self.show()

    def update_progress(self, event: Progress) -> None:
        self.detail.setText(describe_progress(event))
        if event.total > 0:
            scale = max(1, event.total // 1_000_000)  # QProgressBar takes ints
            self.bar.setRange(0, int(event.total // scale))
            self.bar.setValue(int(event.done // scale))


class ModelLoader(QObject):
    """Runs loads one at a time and reports the outcome through signals."""

    loaded = Signal(object)  # ModelInfo
    failed = Signal(str, str)
    cancelled = Signal()

    def __init__(self, worker: EngineWorker, banner: ProgressBanner,
                 on_status: Callable[[str], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker, self.banner, self._on_status = worker, banner, on_status
        self.stream: EventStream | None = None
        banner.cancel_requested.connect(self.cancel)

    @property
    def loading(self) -> bool:
        return self.stream is not None

    def cancel(self) -> None:
        if self.stream is not None:
            self.stream.cancel()

    async def load(self, request: LoadModel) -> ModelInfo | None:
        if self.stream is not None:
            self.stream.close()
        title = ("Loading the demo model" if request.demo else
                 f"Connecting to {request.remote.base_url}" if request.remote is not None else
                 f"Loading {request.folder}")
        self.banner.start(title)
        self._on_status("Loading…")
        stream = self.stream = self.worker.stream(request)
        try:
            async for event in stream:
                if isinstance(event, Progress):
                    self.banner.update_progress(event)
                elif isinstance(event, Loaded):
                    self.loaded.emit(event.info)
                    return event.info
                elif isinstance(event, Failed):
                    self.failed.emit(event.error, event.detail)
                elif isinstance(event, Finished):
                    self.cancelled.emit()
            return None
        finally:
            if self.stream is stream:
                self.stream = None
                self.banner.hide()
