"""Settings through the dialog: saved atomically, applied, and still there after a restart."""

from __future__ import annotations

import json

from PySide6.QtWidgets import QApplication

from app import paths
from app.gui import theme
from app.gui.main import read_settings
from app.gui.settings_dialog import SettingsDialog
from app.settings import Settings, load_settings

from .fake_folder import make_grok_folder


def test_settings_survive_a_restart_of_the_main_window(qtbot, make_window, store):
    """Values changed in the dialog are saved, and a new window starts with them."""
    conv = store.create_conversation("chat")
    window = make_window(Settings(welcome_done=True))
    window.open_conversation(conv)
    dialog = window.open_settings()
    dialog.temperature.setValue(0.3)
    dialog.top_k.setValue(40)
    dialog.random_seed.setChecked(False)
    dialog.seed.setValue(1234)
    dialog.system_prompt.setPlainText("Answer briefly.")
    dialog.conversation_prompt.setPlainText("You are a pirate.")
    dialog.theme.setCurrentText("dark")
    dialog.accept()
    assert theme.current_palette().name == "dark"
    window.close()

    saved = load_settings()
    assert saved.sampling.temperature == 0.3 and saved.sampling.top_k == 40
    assert saved.sampling.seed == 1234 and saved.system_prompt == "Answer briefly."
    assert saved.theme == "dark"
    assert store.get_conversation(conv).system_prompt == "You are a pirate."
    restarted = make_window(read_settings()[0])
    assert restarted.settings == saved
    again = restarted.open_settings()
    assert again.temperature.value() == 0.3 and again.theme.currentText() == "dark"
    again.reject()
    theme.apply_theme(QApplication.instance(), "light")


def test_window_geometry_is_remembered(qtbot, make_window):
    """QSettings keeps only the geometry, in the config folder."""
    window = make_window()
    window.resize(700, 500)
    window.close()
    assert (paths.config_dir() / "window.ini").is_file()
    assert make_window(resize=False).size().toTuple() == (700, 500)


def test_corrupt_settings_file_falls_back_with_a_message(home):
    """A broken settings.json gives defaults plus one line naming the file."""
    paths.settings_path().write_text("{oops")
    settings, problem = read_settings()
    assert settings == Settings() and str(paths.settings_path()) in problem


def test_dialog_checks_the_folder_when_chosen(qtbot, home, tmp_path):
    """A good folder shows what was found; a broken one names the missing file."""
    folder = make_grok_folder(tmp_path / "grok")
    dialog = SettingsDialog(Settings(model_folder=str(folder)))
    qtbot.addWidget(dialog)
    assert dialog.folder_status.text().startswith("Found 3 weight files")
    (folder / "pytorch_model-00006-TP-001.safetensors").unlink()
    dialog.check_folder()
    assert "pytorch_model-00006-TP-001.safetensors: missing" in dialog.folder_status.text()
    assert "GB of weights at bf16" in dialog.placement.text()  # the folder's own config
    edited, prompt = dialog.edited()
    assert edited.model_folder == str(folder) and prompt is None
    assert json.loads(json.dumps(edited.to_dict()))["model_folder"] == str(folder)
