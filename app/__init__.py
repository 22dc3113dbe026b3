"""Grok Desktop: a desktop chat app for xAI's open-weights Grok-2.

The version lives here and only here (pyproject reads it, the GUI and installers show it).
"""

__version__ = "0.1.0"
APP_NAME = "Grok Desktop"
APP_ID = "grok-desktop"
