"""Parsing of values users type (CLI options, spec parameters, source options, environment defaults).

One place, so ``yes``/``on``/``1`` mean the same everywhere a boolean is accepted.
"""
from __future__ import annotations

from typing import Any

from .errors import ConfigError

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def parse_bool(raw: Any, *, what: str) -> bool:
    """A bool, or one of the words above in any case; anything else raises a ConfigError naming ``what``."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ConfigError(f"{what} takes true or false, not {raw!r}")
