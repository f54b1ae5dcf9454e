"""Error types. Configuration errors stop a run before any work; sample errors become manifest rows."""
from __future__ import annotations

import os
from typing import Mapping


class ConfigError(ValueError):
    """Bad configuration (unknown dataset or codec, bad spec value, empty or wrong root)."""


class SampleError(Exception):
    """A problem with one sample: recorded as a manifest row with status 'error', the run goes on."""


class MissingWeightsError(ConfigError):
    """A learned codec's weights are not where they are expected and cannot be downloaded."""


class OutputError(Exception):
    """The output location cannot be written (read-only, full, no permission, no such bucket): the run
    stops with this one-line message, and nothing partial is left under a final name."""


def env_count(name: str, what: str, environ: Mapping[str, str] | None = None) -> int | None:
    """A positive whole number from the environment variable ``name`` (None when unset or empty).

    Only user-level defaults and local settings are read so (a run's config reads its defaults on the
    client; the loaders their pixel limit): checked where read, so a typo stops with one clear line
    instead of a default silently taking over.
    """
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"${name}={raw!r} is not a number of {what}") from None
    if value < 1:
        raise ConfigError(f"${name} must be at least 1, not {value}")
    return value
