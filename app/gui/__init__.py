"""The desktop GUI (PySide6). Never imports torch or the engine: it talks to the engine thread
through `app.worker`. Entry point: `app.gui.main.run_gui`."""
