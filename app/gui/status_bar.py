"""The status bar: model name, where the weights live, tok/s, time to first token, memory."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QStatusBar, QWidget

from app.messages import GenerationStats, ModelInfo
from app.process_memory import peak_bytes, resident_bytes

MEMORY_REFRESH_MS = 2000
_DEVICES = {"cuda": "GPU", "cpu": "CPU", "cuda+cpu": "GPU + CPU", "mps": "Apple GPU"}


def memory_in_use() -> tuple[int, str] | None:
    """(bytes, label): resident memory from /proc, else the peak from getrusage, else None."""
    resident = resident_bytes()
    if resident is not None:
        return resident, "memory"
    peak = peak_bytes()
    return None if peak is None else (peak, "peak memory")


def format_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:,.0f} kB"


class StatusBar(QStatusBar):
    """Five labels; memory refreshes every 2 s (GPU memory through the worker)."""

    def __init__(self, gpu_memory: Callable[[], int | None] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizeGripEnabled(False)
        self._gpu_memory = gpu_memory
        self.model = self._label("Model", "No model loaded")
        self.device = self._label("Where the weights live", "")
        self.speed = self._label("Tokens per second", "")
        self.ttft = self._label("Time to first token", "")
        self.memory = self._label("Memory in use", "")
        self.api = self._label("Local API server", "")
        self.addWidget(self.model)
        self.addWidget(self.device)
        self.addWidget(self.api)
        for label in (self.speed, self.ttft, self.memory):
            self.addPermanentWidget(label)
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.refresh_memory)
        self._timer.start(MEMORY_REFRESH_MS)
        self.refresh_memory()

    def _label(self, name: str, text: str) -> QLabel:
        label = QLabel(text, self)
        label.setAccessibleName(name)
        return label

    def set_model(self, info: ModelInfo | None) -> None:
        if info is None:
            self.model.setText("No model loaded")
            self.device.setText("")
            return
        self.model.setText(info.name)
        if info.device.startswith("remote"):  # "remote host:port" (app/backends)
            self.device.setText(f"remote · {info.device.removeprefix('remote').strip()}")
        else:
            where = _DEVICES.get(info.device, info.device.upper())
            self.device.setText(f"Weights on {where} · {info.quantization}")
        self.device.setToolTip(info.folder)

    def set_api_server(self, url: str | None, note: str = "") -> None:
        """"API on http://127.0.0.1:1234/v1" while it runs, else `note` (why it is off)."""
        self.api.setText(f"API on {url}" if url else note)
        self.api.setToolTip("OpenAI-compatible API server (Settings > API server)")

    def set_loading(self, text: str) -> None:
        self.model.setText(text)

    def set_generating(self) -> None:
        """A reply started: the last reply's speed no longer applies."""
        self.speed.setText("generating…")
        self.ttft.setText("")

    def set_stats(self, stats: GenerationStats) -> None:
        if stats.completion_tokens:
            self.speed.setText(f"{stats.tokens_per_s:,.1f} tok/s")
            self.ttft.setText(f"first token {stats.ttft_s:,.2f} s")

    def refresh_memory(self) -> None:
        parts = []
        usage = memory_in_use()
        if usage is not None:
            parts.append(f"{usage[1].capitalize()} {format_bytes(usage[0])}")
        gpu = self._gpu_memory() if self._gpu_memory else None
        if gpu:
            parts.append(f"GPU {format_bytes(gpu)}")
        self.memory.setText(" · ".join(parts))
