"""The download view: the Grok 2 Community License, the plan for this machine, the disk check,
then per-file and overall progress with pause, cancel and resume (app/download/).

The hub is asked and the files are fetched on a Python thread; progress reaches the widgets
through a queued Qt signal. That thread also measures this machine for the plan (free GPU
memory, RAM: the engine's probe) and, with "keep only the prepared model", quantizes: torch and
the engine are imported there, never on the GUI thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app import paths
from app.download import license
from app.download.budget import machine_budgets, propose, size
from app.download.fetch import Control, Progress, Stopped
from app.download.hub import REPO
from app.download.pipeline import Look, Request, look, recent, run
from app.errors import UserError
from app.placement import bandwidths, budget_bytes
from app.settings import Settings


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def describe(p: Progress) -> str:
    """The overall line: bytes, rate and time left."""
    return (f"{size(p.done)} of {size(p.total)} · {p.files_done} of {p.files_total} files · "
            f"{size(p.rate)}/s · {_eta(p.eta_s)} left")


class _Bridge(QObject):
    """Signals emitted from the download thread, delivered on the GUI thread."""

    looked = Signal(object)
    progress = Signal(object)
    finished = Signal(str)
    stopped = Signal(str)
    failed = Signal(str)


class DownloadView(QWidget):
    """Emits `finished(folder)` when the model is downloaded (and prepared) and verified."""

    finished = Signal(str)

    def __init__(self, settings: Settings, parent: QWidget | None = None, *,
                 endpoint: str | None = None, repo: str = REPO) -> None:
        super().__init__(parent)
        self.setObjectName("DownloadView")
        self.settings, self.endpoint, self.repo = settings, endpoint, repo
        self.control: Control | None = None
        self.look: Look | None = None
        self.state = "idle"
        self.quant_chosen = False  # the plan's quantization is applied once, then the user's
        self.bridge = _Bridge(self)
        self.bridge.looked.connect(self._looked)
        self.bridge.progress.connect(self.show_progress)
        self.bridge.finished.connect(self._finished)
        self.bridge.stopped.connect(self._stopped)
        self.bridge.failed.connect(self._failed)
        self._build()
        self._offer_resume()
        self._update_buttons()

    # ---- building -------------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        title = QLabel("Download Grok-2", self)
        title.setObjectName("WelcomeCardTitle")
        layout.addWidget(title)
        text = license.SUMMARY.replace(license.LICENSE_URL,
                                       f'<a href="{license.LICENSE_URL}">{license.LICENSE_URL}</a>')
        self.license_text = QLabel(text, self)
        self.license_text.setWordWrap(True)
        self.license_text.setTextFormat(Qt.TextFormat.RichText)
        self.license_text.setOpenExternalLinks(True)
        layout.addWidget(self.license_text)
        self.accept_box = QCheckBox("I accept the Grok 2 Community License", self)
        self.accept_box.setAccessibleName("Accept the Grok 2 Community License")
        if license.accepted():
            self.accept_box.setChecked(True)
            self.accept_box.setEnabled(False)
            self.accept_box.setText("Grok 2 Community License accepted")
        self.accept_box.toggled.connect(self._update_buttons)
        layout.addWidget(self.accept_box)

        form = QFormLayout()
        default = paths.data_dir() / "models" / "grok-2"
        self.folder = QLineEdit(str(default), self)
        self.folder.setAccessibleName("Download folder")
        browse = QPushButton("Browse…", self)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        form.addRow("Folder", row)
        self.prepared_only = QCheckBox("Keep only the prepared model (quantize each part as it "
                                       "arrives, delete the bf16 files)", self)
        form.addRow("", self.prepared_only)
        self.quant = QComboBox(self)
        self.quant.addItems(["int4", "int8", "bf16"])
        self.quant.setAccessibleName("Quantization to prepare")
        form.addRow("Prepare as", self.quant)
        layout.addLayout(form)
        self.folder.editingFinished.connect(self._invalidate)
        self.prepared_only.toggled.connect(self._invalidate)
        self.prepared_only.toggled.connect(self._update_buttons)
        self.quant.currentIndexChanged.connect(self._invalidate)
        self.quant.activated.connect(lambda _index: setattr(self, "quant_chosen", True))

        self.plan_label = QLabel("", self)
        self.plan_label.setWordWrap(True)
        self.plan_label.setObjectName("DownloadPlan")
        self.disk_label = QLabel("", self)
        self.disk_label.setWordWrap(True)
        self.disk_label.setObjectName("FolderCheck")
        layout.addWidget(self.plan_label)
        layout.addWidget(self.disk_label)

        self.file_label = QLabel("", self)
        self.file_bar = QProgressBar(self)
        self.file_bar.setAccessibleName("Current file")
        self.overall_bar = QProgressBar(self)
        self.overall_bar.setAccessibleName("Overall")
        self.stats = QLabel("", self)
        for w in (self.file_label, self.file_bar, self.overall_bar, self.stats):
            layout.addWidget(w)
        self.message = QLabel("", self)
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.message)

        buttons = QHBoxLayout()
        self.check_button = QPushButton("Check plan and disk", self)
        self.start_button = QPushButton("Start download", self)
        self.start_button.setProperty("primary", True)
        self.pause_button = QPushButton("Pause", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.check_button.clicked.connect(self.check)
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(lambda: self.stop("paused"))
        self.cancel_button.clicked.connect(lambda: self.stop("cancelled"))
        buttons.addWidget(self.check_button)
        buttons.addStretch(1)
        for b in (self.start_button, self.pause_button, self.cancel_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        layout.addStretch(1)
        self._show_progress_widgets(False)

    def _offer_resume(self) -> None:
        """Prefill the last unfinished download (the app was closed or the machine restarted):
        Check, then Start, goes on from the bytes already there."""
        req = recent()
        if req is None:
            return
        self.folder.setText(str(req.out))
        self.prepared_only.setChecked(req.prepared_only)
        self.quant.setCurrentText(req.quant)
        self.quant_chosen = True
        self.message.setText(f"An unfinished download to {req.out} is there: check and start "
                             "to resume it (nothing already received is fetched again).")

    def _show_progress_widgets(self, show: bool) -> None:
        for w in (self.file_label, self.file_bar, self.overall_bar, self.stats):
            w.setVisible(show)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose where to download Grok-2")
        if folder:
            self.folder.setText(str(Path(folder) / "grok-2"))
            self._invalidate()

    def _invalidate(self) -> None:
        if self.state in ("ready", "idle", "failed"):
            self.look = None
            self.state = "idle"
            self.plan_label.setText("")
            self.disk_label.setText("")
            self._update_buttons()

    def _update_buttons(self) -> None:
        busy = self.state in ("checking", "running")
        accepted = self.accept_box.isChecked()
        self.check_button.setEnabled(not busy and accepted)
        self.start_button.setEnabled(accepted and self.state in ("ready", "paused", "failed"))
        self.start_button.setText("Resume" if self.state in ("paused", "failed") else
                                  "Start download")
        self.pause_button.setEnabled(self.state == "running")
        self.cancel_button.setEnabled(self.state in ("running", "paused"))
        for w in (self.folder, self.prepared_only):
            w.setEnabled(not busy and self.state != "paused")
        self.quant.setEnabled(self.prepared_only.isChecked() and self.folder.isEnabled())

    # ---- steps ----------------------------------------------------------------------------
    def request(self) -> Request:
        return Request(Path(self.folder.text()).expanduser(), self.repo,
                       endpoint=self.endpoint, prepared_only=self.prepared_only.isChecked(),
                       quant=self.quant.currentText())

    def check(self) -> None:
        """Ask the hub for the file list (and headers), then show the plan and the disk check.
        Nothing is written."""
        if not self.accept_box.isChecked():
            return
        self.state = "checking"
        self.message.setText("Asking the hub for the file list…")
        self._update_buttons()
        req = self.request()
        threading.Thread(target=self._look_thread, args=(req,), daemon=True,
                         name="grok-download-look").start()

    def _look_thread(self, req: Request) -> None:
        try:
            lk = look(req)
            gpu, cpu = budget_bytes(self.settings)  # the Settings budgets, where the user set
            if gpu is None or cpu is None:           # them; else what this machine has
                free_gpu, ram = machine_budgets()
                gpu = free_gpu if gpu is None else gpu
                cpu = ram if cpu is None else cpu
            lk.proposal = propose(lk.cfg, gpu, cpu, bandwidths())
            self.bridge.looked.emit(lk)
        except UserError as exc:
            self.bridge.failed.emit(str(exc))
        except Exception as exc:  # noqa: BLE001 - shown as one line, never a traceback
            self.bridge.failed.emit(f"{type(exc).__name__}: {exc}")

    def _looked(self, lk: Look) -> None:
        self.look = lk
        proposal = lk.proposal
        assert proposal is not None
        self.plan_label.setText(proposal.text)
        if proposal.fits and lk.request.prepared_only and not self.quant_chosen:
            self.quant_chosen = True
            self.quant.blockSignals(True)
            self.quant.setCurrentText(proposal.quant)
            self.quant.blockSignals(False)
            lk.request.quant = proposal.quant
        disk = lk.disk()
        self.disk_label.setText(disk.line() + ("" if disk.ok else " Not enough: free some "
                                               "space or choose another folder."))
        self.disk_label.setProperty("ok", disk.ok)
        self.state = "ready" if disk.ok else "idle"
        self.message.setText(f"{lk.snapshot.repo} at {lk.snapshot.commit[:12]}: "
                             f"{len(lk.snapshot.files)} files, "
                             f"{size(lk.snapshot.total_bytes)}.")
        self._update_buttons()

    def start(self) -> None:
        """Start, or resume after a pause, a restart or an error: only missing bytes are asked
        for."""
        if not self.accept_box.isChecked():
            return
        if not license.accepted():
            license.accept()
        lk, self.look = self.look, None
        self.control = Control()
        self.state = "running"
        self.message.setText("")
        self._show_progress_widgets(True)
        self._update_buttons()
        req = self.request()
        threading.Thread(target=self._run_thread, args=(lk, req, self.control), daemon=True,
                         name="grok-download").start()

    def _run_thread(self, lk: Look | None, req: Request, control: Control) -> None:
        try:
            if lk is None:
                lk = look(req)
            folder = run(lk, control, self.bridge.progress.emit)
            self.bridge.finished.emit(str(folder))
        except Stopped as stop:
            self.bridge.stopped.emit(stop.reason)
        except UserError as exc:
            self.bridge.failed.emit(str(exc))
        except Exception as exc:  # noqa: BLE001
            self.bridge.failed.emit(f"{type(exc).__name__}: {exc}")

    def stop(self, reason: str) -> None:
        """Pause (resumable) or cancel; both keep what has arrived."""
        if self.control is not None and self.state == "running":
            self.control.stop(reason)
            self.message.setText("Pausing…" if reason == "paused" else "Cancelling…")
        elif self.state == "paused" and reason == "cancelled":
            self._stopped("cancelled")

    # ---- results --------------------------------------------------------------------------
    def show_progress(self, p: Progress) -> None:
        if self.state != "running":
            return
        self.file_label.setText(f"{p.stage}: {p.file} ({size(p.file_done)} of "
                                f"{size(p.file_size)})" if p.file else p.stage)
        self.file_bar.setRange(0, 1000)
        self.file_bar.setValue(int(1000 * p.file_done / p.file_size) if p.file_size else 1000)
        self.overall_bar.setRange(0, 1000)
        self.overall_bar.setValue(int(1000 * p.done / p.total) if p.total else 0)
        self.stats.setText(describe(p))

    def _finished(self, folder: str) -> None:
        self.state = "done"
        self.file_label.setText("done")
        self.overall_bar.setValue(self.overall_bar.maximum())
        self.message.setText(f"Verified and ready: {folder}")
        self._update_buttons()
        self.finished.emit(folder)

    def _stopped(self, reason: str) -> None:
        self.state = "paused" if reason == "paused" else "idle"
        folder = self.folder.text()
        self.message.setText(
            f"Paused. What arrived is kept in {folder}; Resume goes on from there."
            if reason == "paused" else
            f"Cancelled. What arrived is kept in {folder}: download again to resume.")
        self._update_buttons()

    def _failed(self, error: str) -> None:
        was_running = self.state == "running"
        self.state = "failed" if was_running else "idle"
        self.message.setText(error)
        self._update_buttons()


class DownloadDialog(QDialog):
    """The download view in a window of its own (from the welcome view or Settings > Model);
    it closes itself once the model is ready, and `finished_folder` carries the folder."""

    finished_folder = Signal(str)

    def __init__(self, settings: Settings, parent: QWidget | None = None, **kw) -> None:
        super().__init__(parent)
        self.setWindowTitle("Download Grok-2")
        self.view = DownloadView(settings, self, **kw)
        layout = QVBoxLayout(self)
        layout.addWidget(self.view)
        self.view.finished.connect(self._done)
        self.resize(720, 560)

    def _done(self, folder: str) -> None:
        self.finished_folder.emit(folder)
        self.accept()

    def reject(self) -> None:  # closing the window pauses: what arrived is kept
        if self.view.state == "running":
            self.view.stop("paused")
        super().reject()
