"""Exceptions that carry a message meant for the user (one line: the file and the fix)."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. The CLI prints it as one line and exits 2; the GUI shows it."""


class ModelFileError(UserError):
    """A model folder or file is missing, truncated, corrupt or of the wrong shape."""


class StorageError(UserError):
    """The conversation database cannot be written (disk full, read-only, corrupt)."""


class BadImport(ValueError):
    """A problem at one place in an import file: `where` is a JSON path like
    conversations[2].messages[5]; the importer turns it into a UserError naming the file."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where, self.problem = where, problem
