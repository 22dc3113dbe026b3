"""Type and range checks for the frozen dataclasses that outside data is read into (settings.json,
sampling parameters from imports and API bodies), so a wrong value fails with its key named.

JSON gives Python `bool` for true/false, which is an `int` subclass, and `float('nan')` for NaN
(Python's json reads NaN and Infinity): both slip past `<`/`>` checks, so each field's value is
checked against its annotation first. No Qt, no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

_KIND = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """field name -> (base type, None allowed) for the fields annotated bool/int/float/str,
    optionally `| None`; fields of other types are not checked here."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, bool]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        optional = False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            hint = args[0] if len(args) == 1 else None
        if hint in _KIND:
            out[f.name] = (hint, optional)
    return out


def check_value(name: str, value: Any, kind: type, optional: bool = False) -> None:
    """Raise ValueError naming `name` unless `value` is of `kind` (bool, int, float or str; an
    int is a float too, a bool is neither) and, for numbers, finite."""
    if value is None and optional:
        return
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ValueError(f"'{name}' must be {_KIND[kind]} (got {_show(value)})")
    if kind in (int, float) and not math.isfinite(value):
        raise ValueError(f"'{name}' must be a finite number (got {_show(value)})")


def check_fields(obj: object) -> None:
    """Check every bool/int/float/str field of the dataclass instance `obj` (see check_value).
    Raises ValueError naming the first field that is wrong."""
    cls: type = type(obj)
    for name, (kind, optional) in _field_types(cls).items():
        check_value(name, getattr(obj, name), kind, optional)


def _show(value: Any) -> str:
    """A value as the user wrote it in JSON: true/false/null, strings quoted."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    text = repr(value) if isinstance(value, str) else type(value).__name__ if isinstance(
        value, (dict, list)) else str(value)
    return {"dict": "an object", "list": "a list"}.get(text, text)
