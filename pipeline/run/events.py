"""What happens to each sample of a shard, as typed events, and the loop that produces them.

One stream of events per shard: :func:`sample_events` yields them in this process (the normal
case) or in an isolated child (:mod:`pipeline.run.isolation`) that pickles them back to its
parent; :mod:`pipeline.run.task` turns them into tar members and manifest rows either way. Both
import the event types from here, so neither imports the other's internals.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Union

from ..errors import SampleError
from ..modalities import get_modality

if TYPE_CHECKING:
    from ..codecs.base import Codec
    from ..codecs.spec import CodecSpec
    from .task import ShardTask


@dataclass(frozen=True)
class SampleFailed:
    """Sample ``index`` could not be read or decoded: an error row for every setting."""

    index: int
    reason: str


@dataclass(frozen=True)
class SampleRead:
    """Sample ``index`` was read: the source bytes' SHA-256 and what the source attaches."""

    index: int
    sha256: str
    attachments: dict[str, bytes]
    fields: dict[str, Any]


@dataclass(frozen=True)
class SettingEncoded:
    """Sample ``index`` coded with pending setting ``setting``: tar members and measures."""

    index: int
    setting: int
    members: list[tuple[str, bytes]]
    measures: dict[str, Any]


@dataclass(frozen=True)
class SettingFailed:
    """Sample ``index`` could not be coded with pending setting ``setting``: an error row for it."""

    index: int
    setting: int
    reason: str


SampleEvent = Union[SampleFailed, SampleRead, SettingEncoded, SettingFailed]


@dataclass(frozen=True)
class StreamDone:
    """An isolated child sent every event of its job."""


@dataclass(frozen=True)
class StreamFatal:
    """An isolated child could not set up (no sample is to blame): the traceback it saw."""

    traceback: str


def import_modules(modules: tuple[str, ...]) -> None:
    """Import the modules that register codecs defined outside the package (on workers, children)."""
    for module in modules:
        importlib.import_module(module)


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}"


#: samples read ahead per shard, so a learned codec's network sees several images at once (see
#: :mod:`pipeline.codecs.batching`); events still come out in sample order
BATCH_WINDOW = 32


def sample_events(task: "ShardTask", pending: list["CodecSpec"], codecs: list["Codec"],
                  start: tuple[int, int] = (0, 0), *, batch: bool = True) -> Iterator[SampleEvent]:
    """What happens to each sample, in order, from sample ``start[0]`` and setting ``start[1]`` on.

    Per sample a :class:`SampleFailed` (unreadable source) or a :class:`SampleRead`, then per
    pending setting j a :class:`SettingEncoded` or a :class:`SettingFailed`. Settings the modality
    codes in batches (``batched``/``encode_many``) are coded :data:`BATCH_WINDOW` samples at a time
    unless ``batch`` is False (an isolated child codes one image at a time to pin a crash on one sample).
    """
    modality = get_modality(task.source.modality)
    batched, encode_many = getattr(modality, "batched", None), getattr(modality, "encode_many", None)
    many = [j for j, c in enumerate(codecs) if batch and batched is not None and batched(c, task.options)]
    if not many or encode_many is None or start != (0, 0):
        yield from _one_by_one(task, pending, codecs, start)
        return
    for lo in range(0, len(task.refs), BATCH_WINDOW):
        window = [_read(task, modality, i) for i in range(lo, min(lo + BATCH_WINDOW, len(task.refs)))]
        ready = [w for w in window if isinstance(w[0], SampleRead)]
        coded = {j: encode_many(codecs[j], [p for _, p in ready], task.options) for j in many}
        slot = {id(w): k for k, w in enumerate(ready)}
        for w in window:
            event, prepared = w
            yield event
            if isinstance(event, SampleFailed):
                continue
            for j in range(len(pending)):
                result = coded[j][slot[id(w)]] if j in coded else _encode(modality, codecs[j], prepared, task.options)
                if isinstance(result, Exception):
                    yield SettingFailed(event.index, j, _reason(result))
                else:
                    yield SettingEncoded(event.index, j, *result)


def _read(task: "ShardTask", modality: Any, i: int) -> tuple[SampleRead | SampleFailed, Any]:
    try:
        raw = task.source.read(task.refs[i])
        sha = hashlib.sha256(raw.data).hexdigest()
        prepared = modality.prepare(raw, task.options)
    except Exception as exc:  # per-sample: recorded, the run goes on
        return SampleFailed(i, _reason(exc)), None
    return SampleRead(i, sha, raw.attachments, raw.fields), prepared


def _encode(modality: Any, codec: "Codec", prepared: Any, options: dict[str, Any]) -> Any:
    try:
        return modality.encode(codec, prepared, options)
    except Exception as exc:  # noqa: BLE001 - returned: the caller yields the setting's error row
        return exc


def _one_by_one(task: "ShardTask", pending: list["CodecSpec"], codecs: list["Codec"],
                start: tuple[int, int]) -> Iterator[SampleEvent]:
    modality = get_modality(task.source.modality)
    first, from_setting = start
    for i in range(first, len(task.refs)):
        event, prepared = _read(task, modality, i)
        yield event
        if isinstance(event, SampleFailed):
            continue
        for j in range(from_setting if i == first else 0, len(pending)):
            result = _encode(modality, codecs[j], prepared, task.options)
            if isinstance(result, Exception):
                yield SettingFailed(i, j, _reason(result))
            else:
                yield SettingEncoded(i, j, *result)
