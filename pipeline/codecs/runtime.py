"""Where learned codecs find their weights and how they run: settings a run ships to its workers.

A run's :class:`~pipeline.run.config.TranscodeConfig` holds these settings; each task carries them
and the worker applies them around its work with :func:`use`, so a worker started anywhere (a
``dask worker`` on another machine, a Kubernetes pod, an isolated child process) uses what the
client asked for, never its own environment.

The environment variables below are user-level defaults, read once on the client when a config is
created (:meth:`CodecRuntime.from_env`), and by code that runs a codec outside any run (``mpq
decode``, the loaders, a notebook).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping

from ..errors import ConfigError, env_count
from ..values import parse_bool

WEIGHTS_ENV = "MPQ_WEIGHTS_DIR"
OFFLINE_ENV = "MPQ_OFFLINE"
DEVICE_ENV = "MPQ_DEVICE"
THREADS_ENV = "MPQ_INFERENCE_THREADS"


@dataclass(frozen=True)
class CodecRuntime:
    """Weights folder (None: each family's cache), no downloads, device (None: auto), intra-op threads."""

    weights_dir: str | None = None
    offline: bool = False
    device: str | None = None
    inference_threads: int | None = None

    def __post_init__(self) -> None:
        # the device name is checked where it is used (choose_device) and when a config is made, so a
        # bad $MPQ_DEVICE does not stop code that only reads the weights folder
        if self.inference_threads is not None and (isinstance(self.inference_threads, bool)
                                                   or not isinstance(self.inference_threads, int)
                                                   or self.inference_threads < 1):
            raise ConfigError(f"inference threads must be a whole number of at least 1, not {self.inference_threads!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CodecRuntime:
        """The user's defaults: ``$MPQ_WEIGHTS_DIR``, ``$MPQ_OFFLINE``, ``$MPQ_DEVICE``, ``$MPQ_INFERENCE_THREADS``."""
        env = os.environ if environ is None else environ
        weights = env.get(WEIGHTS_ENV, "").strip()
        offline = env.get(OFFLINE_ENV, "").strip()
        return cls(weights_dir=os.path.abspath(os.path.expanduser(weights)) if weights else None,
                   offline=parse_bool(offline, what=f"${OFFLINE_ENV}") if offline else False,
                   device=env.get(DEVICE_ENV, "").strip() or None,
                   inference_threads=env_count(THREADS_ENV, "threads", env))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_request(text: str | None) -> str:
    """A device request in its normal form (``auto``, ``cpu``, ``cuda``, ``cuda:N``); other names raise."""
    want = (text or "auto").strip().lower()
    if want in ("auto", "cpu", "cuda") or (want.startswith("cuda:") and want[5:].isdigit()):
        return want
    raise ConfigError(f"unknown device {want!r}: use auto, cpu, cuda or cuda:N")


_active: contextvars.ContextVar[CodecRuntime | None] = contextvars.ContextVar("mpq_codec_runtime", default=None)


def current() -> CodecRuntime:
    """The settings of the run this code works for; outside any run, the user's environment defaults."""
    active = _active.get()
    return active if active is not None else CodecRuntime.from_env()


@contextlib.contextmanager
def use(settings: CodecRuntime) -> Iterator[CodecRuntime]:
    """Apply a run's settings for the code inside (this thread or task only; restored on exit)."""
    token = _active.set(settings)
    try:
        yield settings
    finally:
        _active.reset(token)
