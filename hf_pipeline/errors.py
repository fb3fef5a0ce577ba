"""The one user-facing error: a bad recipe, flag, input file or artifact, said in one line that names it.

Every command turns a ``ConfigError`` into ``hf-pipeline: error: <message>`` and exit status 2; anything else is a
bug and keeps its traceback. ``suggest`` and ``unknown`` word the "did you mean" hints alike everywhere.
"""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A bad recipe, flag or input reference. Its message is one line that names the file, key or path."""


def suggest(key: str, choices) -> str:
    """`` (did you mean 'depth'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(key), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(what: str, name, choices) -> str:
    """``unknown reward function 'corectness' (did you mean 'correctness'?)``; the choices if none is close."""
    return f"unknown {what} '{name}'" + (suggest(name, choices) or f" (known: {', '.join(choices)})")
