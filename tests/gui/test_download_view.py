"""The download flow in the GUI against the stand-in hub: from the welcome view, license,
plan and disk check, progress, pause and resume, then the model loads and a chat opens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.download import license
from app.gui.download_view import DownloadDialog
from app.settings import Settings
from tests.download.hub import StandInHub
from tests.gui.conftest import wait


@pytest.fixture(scope="module")
def repo_folder(tmp_path_factory) -> Path:
    from app.engine.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("repo") / "grok-2", seed=3,
                                   n_merges=120)
    (folder / "LICENSE").write_text("Grok 2 Community License Agreement (stand-in text)\n")
    return folder


@pytest.fixture
def hub(repo_folder, monkeypatch):
    from huggingface_hub import constants

    from app.download import fetch

    monkeypatch.setattr(fetch, "REPORT_EVERY_S", 0.0)  # every piece reaches the view
    server = StandInHub(repo_folder).start()
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)  # as HF_ENDPOINT does
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    yield server
    server.stop()


def _dialog(window) -> DownloadDialog:
    dialogs = window.findChildren(DownloadDialog)
    assert len(dialogs) == 1
    return dialogs[0]


def test_download_from_welcome_pause_resume_load_and_chat(qtbot, make_window, hub, repo_folder,
                                                          tmp_path):
    window = make_window(Settings(welcome_done=False))
    window.start()
    assert window.stack.currentWidget() is window.welcome
    qtbot.mouseClick(window.welcome.download_button, Qt.MouseButton.LeftButton)
    view = _dialog(window).view
    out = tmp_path / "models" / "grok-2"
    view.folder.setText(str(out))
    assert not view.check_button.isEnabled()  # nothing happens before the license
    assert "LICENSE" in view.license_text.text()
    view.accept_box.setChecked(True)
    qtbot.mouseClick(view.check_button, Qt.MouseButton.LeftButton)
    wait(qtbot, lambda: view.state == "ready")
    assert "tokens/s" in view.plan_label.text() or "Does not fit" in view.plan_label.text()
    assert view.disk_label.text().startswith("Disk: needs")
    assert not out.exists()  # checking wrote nothing

    name = "pytorch_model-00006-TP-004.safetensors"
    hub.stall = (name, len(hub.files[name]) // 2)
    qtbot.mouseClick(view.start_button, Qt.MouseButton.LeftButton)
    assert license.accepted()
    wait(qtbot, lambda: name in view.file_label.text() and view.file_bar.value() > 0
         or view.state != "running")
    assert view.state == "running", view.message.text()
    assert view.overall_bar.value() > 0 and "B/s" in view.stats.text() and "left" in view.stats.text()
    if os.environ.get("GROK_DL_SCREENSHOT"):
        view.window().grab().save(os.environ["GROK_DL_SCREENSHOT"])
    qtbot.mouseClick(view.pause_button, Qt.MouseButton.LeftButton)  # the hub is stalled:
    wait(qtbot, lambda: view.state == "paused", timeout=5000)  # the pause ends the read
    hub.release.set()
    assert view.start_button.text() == "Resume" and "kept" in view.message.text()
    again = DownloadDialog(window.settings, window)  # as after closing and reopening the app
    assert again.view.folder.text() == str(out) and "unfinished" in again.view.message.text()
    again.deleteLater()

    qtbot.mouseClick(view.start_button, Qt.MouseButton.LeftButton)
    wait(qtbot, lambda: window.settings.model_folder == str(out))
    assert hub.overlaps() == {}
    wait(qtbot, lambda: window.worker.info is not None and not window.loader.loading)
    assert window.worker.info.folder == str(out)
    assert window.stack.currentWidget() is window.transcript  # the chat is open
    assert window.composer.unavailable_reason is None
    assert not window.findChildren(DownloadDialog) or not _dialog(window).isVisible()


def test_settings_model_tab_opens_the_download(qtbot, make_window, hub):
    window = make_window()
    dialog = window.open_settings()
    button = next(b for b in dialog.findChildren(type(window.welcome.download_button))
                  if b.text() == "Download Grok-2…")
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert _dialog(window).isVisible() and not dialog.isVisible()


def test_errors_show_one_line_and_allow_resume(qtbot, make_window, hub, tmp_path):
    window = make_window()
    view = window.open_download().view
    view.folder.setText(str(tmp_path / "g"))
    view.accept_box.setChecked(True)
    hub.status = 401
    qtbot.mouseClick(view.check_button, Qt.MouseButton.LeftButton)
    wait(qtbot, lambda: "401" in view.message.text())
    assert "\n" not in view.message.text() and view.state == "idle"


def test_keep_prepared_only_from_the_view_loads_the_prepared_folder(qtbot, make_window, hub,
                                                                    tmp_path):
    """The download thread quantizes (the engine is imported there, not on the GUI thread);
    the prepared folder becomes the model and loads."""
    window = make_window()
    view = window.open_download().view
    out = tmp_path / "grok-2-int4"
    view.folder.setText(str(out))
    view.accept_box.setChecked(True)
    view.prepared_only.setChecked(True)
    assert view.quant.isEnabled()
    view.quant.setCurrentText("int4")
    view.quant_chosen = True  # the user chose: the plan's proposal does not override it
    qtbot.mouseClick(view.check_button, Qt.MouseButton.LeftButton)
    wait(qtbot, lambda: view.state == "ready")
    assert "source files at a time" in view.disk_label.text()
    assert view.look is not None and view.look.request.quant == "int4"
    qtbot.mouseClick(view.start_button, Qt.MouseButton.LeftButton)
    wait(qtbot, lambda: window.settings.model_folder == str(out), timeout=60_000)
    assert (out / "prepared.json").is_file() and not (tmp_path / "grok-2-int4.download").exists()
    wait(qtbot, lambda: window.worker.info is not None and not window.loader.loading)
    assert window.worker.info.folder == str(out) and window.worker.info.quantization == "int4"
