"""What a file check raises, shared by the XGBoost and LightGBM checks."""

from __future__ import annotations


class FileCheckError(ValueError):
    """What is wrong with a model file (without its name: the caller adds it)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (XGBoost's go on with a stack trace)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
