"""The decoding stage: a set's members into sample fields, driven by its index's schema.

Each :class:`~pipeline.store.index.Field` names its member, its decoder (resolved here to the
safe table of :mod:`.decoders`, the codec's own decode, or the audio restorer of :mod:`.audio`)
and its type, which says how the value is handed out (images as CHW tensors, audio as
``(channels, n)``, label maps as integer tensors). No dataset or modality is named here.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, NamedTuple, Union

import numpy as np

from ..errors import SampleError
from ..store.index import Field, SetIndex
from .decoders import Decoder, decoder_table, stored_pixels, strict_json

#: field types handed out like the payload of an image or audio set
SIGNALS = ("image", "audio")


class WithRecord:
    """A decoder that needs the sample's record (audio: the lengths and rates to restore)."""

    def __init__(self, fn: Callable[[bytes, Mapping[str, Any]], Any]):
        self.fn = fn

    def __call__(self, data: bytes, record: Mapping[str, Any]) -> Any:
        return self.fn(data, record)


#: what a field is decoded with: a plain decoder of the member's bytes, or one that also reads the record
FieldDecoder = Union[Decoder, WithRecord]
#: decodes a payload in place of its decoder: ``hook(decoder, bytes, ext=...)`` (the training stage)
PayloadHook = Callable[..., Any]


class Member(NamedTuple):
    """A field read from a tar member: the field, its member extension and its resolved decoder."""

    field: Field
    ext: str
    fn: FieldDecoder


def run_decoder(decoder: FieldDecoder, members: Mapping[str, bytes], ext: str,
                record: Mapping[str, Any] | None = None) -> Any:
    """Decode one member; whatever a parser raises on bad bytes becomes a SampleError naming the member."""
    try:
        if isinstance(decoder, WithRecord):
            return decoder(members[ext], record or {})
        return decoder(members[ext])
    except SampleError as exc:
        raise SampleError(f".{ext}: {exc}") from None
    except Exception as exc:
        raise SampleError(f".{ext}: {type(exc).__name__}: {exc}") from exc


def convert(value: Any, type_: str, image_format: str, masks: bool = False) -> Any:
    """A decoded value as handed out: by the field's type, never by dataset (``masks``: detection targets
    carry instance masks)."""
    import torch

    if type_ == "detection":
        from .detection import target

        return target(value, image_format, masks)
    if not isinstance(value, np.ndarray):
        return value
    if type_ == "audio":  # (n, channels) -> (channels, n), torchaudio's layout
        out = np.ascontiguousarray(value.T)
        return out if image_format == "numpy" else torch.from_numpy(out)
    if type_ == "image":
        if value.ndim == 3:
            if image_format == "numpy":
                return value
            if image_format == "pil":
                from PIL import Image

                return Image.fromarray(value)
            return torch.from_numpy(value).permute(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(value))
    if value.dtype not in (np.uint8, np.int16, np.int32, np.int64, np.bool_):  # label maps and other arrays
        value = value.astype(np.int64)
    return torch.from_numpy(value)


class ViewDecoder:
    """How one set's members become fields, worked out once per process (not per sample)."""

    def __init__(self, index: SetIndex, spec: Any, user: Mapping[str, Decoder], *, decode_payload: bool = False,
                 meta: bool = False, image_format: str = "tensor", masks: bool = False):
        self.canonical, self.meta, self.image_format = index.codec, meta, image_format
        self.instance_masks = masks
        self._spec, self._user = spec, dict(user)
        self._restorer: WithRecord | None = None
        main = index.payload
        self.payload_name, self.payload_type = main.name, main.type
        payload = [f for f in index.fields("payload") if f.group is None and f.name == main.name and f.decoder]
        coded = [f for f in payload if f.decoder != "png"] or payload
        self.missing = f"no .{coded[-1].ext} payload"
        if decode_payload:  # the coded payload, not stored decoded pixels
            payload = [f for f in payload if f.decoder != "png"]
        self.payload = [self._resolve(f) for f in payload]
        # (group, member) of the tracks coded with the setting (MUSDB's coded stems)
        self.coded = [(f.group, self._resolve(f)) for f in index.fields("payload") if f.group is not None and f.decoder]
        self.view_records = [f.name for f in index.fields("record", view=True)]
        self.attachments = [self._resolve(f) for f in index.fields("attachment") if f.decoder]
        self.records = [f.name for f in index.fields("record", view=False)]
        self.json = self._user.get("json", strict_json)
        # a user entry for a member we decode replaces our decoder; others (a member the schema lists
        # without a decoder, such as --store-decoded's .decoded.flac, or one it does not list) add a field
        declared = {f.ext for f in index.schema if f.ext and f.decoder} | {"json"}
        self.user = [(ext, fn) for ext, fn in self._user.items() if ext not in declared]
        self.view_members = tuple(dict.fromkeys(["json", *(m.ext for m in self.payload),
                                                 *(m.ext for _, m in self.coded)]))
        self.sample_members = tuple(dict.fromkeys([*(m.ext for m in self.attachments), *self._user]))
        self.view_groups = tuple(dict.fromkeys(group for group, m in self.coded if m.field.type in SIGNALS))
        self.sample_groups = tuple(dict.fromkeys(m.field.group for m in self.attachments
                                                 if m.field.group and m.field.type in SIGNALS))
        self.masks = tuple(dict.fromkeys(m.field.name for m in self.attachments  # moved with the image
                                         if m.field.type in ("mask", "detection") and not m.field.group))

    def _resolve(self, f: Field) -> Member:
        if f.ext is None or f.decoder is None:
            raise SampleError(f"field {f.name!r} is not a decoded member")
        return Member(f, f.ext, self._decoder(f.ext, f.decoder))

    def _decoder(self, ext: str, decoder: str) -> FieldDecoder:
        if decoder == "audio_codec":
            if self._restorer is None:
                from . import audio

                self._restorer = WithRecord(audio.restorer(self._spec))
            return self._restorer
        if decoder == "flac":
            from . import audio

            return WithRecord(audio.lossless)
        if decoder == "png":
            return stored_pixels(ext)  # stored decoded pixels, in the set's lossless container: what the metrics saw
        if decoder == "codec":
            return decoder_table(self._spec, self._user)[ext]
        return decoder_table(None, self._user).get(ext) or decoder_table(None)[_SAFE[decoder]]

    def wanted(self, with_sample_fields: bool) -> tuple[str, ...]:
        """Member extensions to read: the view's (payload, record), and the sample's (attachments) if asked."""
        return self.view_members + (self.sample_members if with_sample_fields else
                                    tuple(e for e in self._user if e not in self.view_members))

    def _record(self, members: Mapping[str, bytes]) -> dict[str, Any]:
        if "json" not in members:
            raise SampleError("no .json record")
        record = run_decoder(self.json, members, "json")
        if not isinstance(record, dict) or record.get("codec") != self.canonical:
            raise SampleError(f"record names codec {record.get('codec') if isinstance(record, dict) else None!r}, "
                              f"the set is {self.canonical}")
        return record

    def sample_fields(self, members: Mapping[str, bytes]) -> dict[str, Any]:
        """The sample fields alone (attachments, record values), the payload neither read nor decoded:
        the lossless fields an evaluation's failure value is built from (``json`` plus :attr:`sample_members`)."""
        return self._extra(members, self._record(members))

    def __call__(self, members: Mapping[str, bytes],
                 payload_hook: PayloadHook | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(view fields: payload, measures, codec; sample fields: attachments, record values).

        ``payload_hook(decoder, bytes, ext)`` decodes the payload instead (the training stage's crop).
        """
        record = self._record(members)
        for m in self.payload:
            if m.ext in members:
                fn: FieldDecoder = m.fn
                if payload_hook is not None:
                    if isinstance(m.fn, WithRecord):
                        raise SampleError("the training stage takes image payloads")
                    fn = partial(payload_hook, m.fn, ext=m.ext)
                payload = run_decoder(fn, members, m.ext, record)
                break
        else:
            raise SampleError(self.missing)
        view: dict[str, Any] = {self.payload_name: convert(payload, self.payload_type, self.image_format)}
        view.update((name, record[name]) for name in self.view_records if name in record)
        view["codec"] = self.canonical
        if self.meta:
            view["json"] = record
        for group, (f, ext, fn) in self.coded:
            if ext in members:
                view.setdefault(group, {})[f.name] = convert(run_decoder(fn, members, ext, record), f.type,
                                                               self.image_format)
        return view, self._extra(members, record)

    def _extra(self, members: Mapping[str, bytes], record: Mapping[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for f, ext, fn in self.attachments:
            if ext in members:
                value = convert(run_decoder(fn, members, ext, record), f.type, self.image_format,
                                self.instance_masks)
                if f.group:
                    extra.setdefault(f.group, {})[f.name] = value
                else:
                    extra[f.name] = value
        extra.update((n, record[n]) for n in self.records if n not in extra and record.get(n) is not None)
        for ext, fn in self.user:
            if ext in members:
                extra[ext] = run_decoder(fn, members, ext)
        return extra


#: the safe table's entry behind each plain decoder name (the table is keyed by member extension)
_SAFE = {"label_map": "seg.png", "integer": "cls", "text": "txt", "json": "json"}
