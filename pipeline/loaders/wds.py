"""Our shards read with the ``webdataset`` library, decoded by the same safe decoders as our loaders.

Two entry points, because a webdataset member handler sees one member, never the sample's record:

- :func:`wds_decoder` for ``WebDataset(urls).decode(wds_decoder())``: every member by its
  extension. Images (``jpg``, ``png``, ``webp``, ``jp2``, ``avif``, ``jxl``, ``qoi``, ``heic``) come out
  as the uint8 (H, W, 3) pixels our loader gives; audio as float32 ``(channels, samples)`` of
  the whole decoded stream at the rate it was made from (Opus: the input rate its OpusHead
  names); ``.cls`` as int, ``.json`` as dict, ``.txt`` as str. A learned ``.bin`` stays bytes
  (the stored ``.png`` beside it holds the pixels) unless ``decode_payload=True``.
- :func:`wds_sample_decoder` for ``WebDataset(urls).map(wds_sample_decoder())`` on undecoded
  samples: it reads the ``.json`` record first and decodes the payload exactly as our loaders do,
  audio cut to the recorded length (MP3 padding, AAC priming, resampling undone) at the source's
  rate and channels.

Nothing here names a modality, dataset or codec: the safe table (:mod:`.decoders`) covers media
and text members; every other payload is one some registered codec declares (its extension,
through its modality's part of the sample schema), decoded by that codec (:meth:`Codec.stream_spec`,
:meth:`Codec.decode_stream`). The sample decoder follows the set's schema: its ``index.json``
when given (``index=`` or ``root``/``dataset``/``split``), else the schema the record's codec and
its modality declare.

Neither ever unpickles. webdataset's own default handlers unpickle ``.pyd``/``.pickle`` and
``torch.load`` ``.pth``; our member handler claims every member, so those never run: members it
does not know (pickle-like ones included) stay bytes.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Mapping

from ..errors import ConfigError, SampleError
from ..media.audio import opus_input_rate  # noqa: F401 - re-exported: users read Opus members' rate here
from ..store.index import Field, SetIndex
from .decode import SIGNALS, FieldDecoder, ViewDecoder, convert, run_decoder
from .decoders import DECODERS, UNSAFE, Decoder, strict_json


def _ext(key: str) -> str:
    """webdataset hands ``.jpg`` or ``.seg.png``; our table keys are ``jpg`` and ``seg.png``."""
    return key.removeprefix(".")


def _hand_out(value: Any, field: Field) -> Any:
    """Signals and detection targets as our loaders hand them out with ``image_format="numpy"`` (audio channels
    first); others as decoded."""
    return convert(value, field.type, "numpy") if field.type in (*SIGNALS, "detection") else value


def _modality_names(codec: Any) -> list[str]:
    """The modalities a codec's sets can be (the lossless reference declares ``any``: every one)."""
    from ..modalities import MODALITIES

    return [codec.modality] if codec.modality in MODALITIES else list(MODALITIES)


def _declared_schema(codec: Any, modality: str, tracks: tuple[str, ...] = (), spec: Any = None) -> tuple[Field, ...]:
    """The payload fields a set of ``codec`` (at ``spec``: its lossless container) declares in ``modality``."""
    from ..modalities import get_modality

    return get_modality(modality).schema(codec, "payload", {}, tracks, spec=spec)


def _stored_beside(fields: tuple[Field, ...], f: Field) -> bool:
    """The coded payload ``f`` has stored decoded pixels as an alternative (a learned ``.bin``'s ``.png``)."""
    return any(g.name == f.name and g.group == f.group and g.decoder == "png" for g in fields if g is not f)


class WdsDecoder:
    """A webdataset member handler: ``handler(".ext", data)`` -> decoded value, or the bytes unchanged.

    Picklable (DataLoader workers get a copy); codecs are built once per process on first use.
    """

    def __init__(self, *, decode_payload: bool = False, extra: Mapping[str, Decoder] | None = None):
        self.decode_payload = decode_payload
        self.table: dict[str, Decoder] = dict(DECODERS)
        for ext, fn in (extra or {}).items():
            if ext in UNSAFE:
                raise ValueError(f"refusing a decoder for .{ext}: loading such members runs code")
            self.table[ext] = fn
        self._codecs: dict[str, Any] = {}
        self._payloads: dict[str, tuple[Field, Any, bool]] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_codecs"], state["_lock"], state["_payloads"] = {}, None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, key: str, data: bytes) -> Any:
        ext = _ext(key)
        last = ext.rsplit(".", 1)[-1]
        if ext in UNSAFE or last in UNSAFE:
            return data  # never decoded, and claimed so webdataset's pickle handlers never see it
        try:
            return self._decode(ext, last, data)
        except SampleError as exc:
            raise SampleError(f".{ext}: {exc}") from None

    def _decode(self, ext: str, last: str, data: bytes) -> Any:
        fn = self.table.get(ext) or self.table.get(last)
        if fn is not None:
            return fn(data)
        declared = self._declared().get(ext) or self._declared().get(last)
        if declared is None:
            return data  # unknown members stay bytes: nothing else gets to interpret them
        field, codec, stored = declared
        if stored and not self.decode_payload:
            return data  # the stored decoded pixels beside it are the payload; decoding needs the codec's weights
        if field.decoder == "flac":  # the lossless reference: the exact stored samples
            from .audio import flac_audio

            return _hand_out(flac_audio(data).samples, field)
        return _hand_out(self.stream_codec(codec, data).decode_stream(data), field)

    def _declared(self) -> dict[str, tuple[Field, Any, bool]]:
        """Payload extension -> (schema field, codec class, stored pixels beside it), for every registered
        codec whose payload the safe table lacks: what each codec's modality declares for its sets."""
        if self._payloads is None:
            from ..codecs import codec_names, get_codec

            out: dict[str, tuple[Field, Any, bool]] = {}
            for name in codec_names():
                cls = get_codec(name)
                for modality in _modality_names(cls):
                    fields = _declared_schema(cls, modality)
                    for f in fields:
                        if f.role == "payload" and f.decoder and f.ext and f.ext not in self.table:
                            out.setdefault(f.ext, (f, cls, _stored_beside(fields, f)))
            self._payloads = out
        return self._payloads

    def stream_codec(self, cls: Any, data: bytes) -> Any:
        """A codec instance that decodes this stream read alone, built once per setting and process.

        The stream names its setting when its decoder needs one (:meth:`Codec.stream_spec`: EnCodec's
        model, a learned ``.bin``'s spec); otherwise the bare family decodes it. A test decodes every
        registered audio family.
        """
        from ..codecs import runnable_codec
        from ..codecs.spec import CodecSpec, parse_spec

        named = cls.stream_spec(data)
        spec = parse_spec(named) if named is not None else CodecSpec(cls.name)
        family = runnable_codec(spec.name)
        with self._lock:
            if spec.canonical not in self._codecs:
                self._codecs[spec.canonical] = family(spec)
            return self._codecs[spec.canonical]


def wds_decoder(*, decode_payload: bool = False, extra: Mapping[str, Decoder] | None = None) -> WdsDecoder:
    """The handler for ``webdataset.WebDataset(urls).decode(pipeline.loaders.wds_decoder())``.

    ``decode_payload`` decodes learned ``.bin`` streams with their codec (weights needed) instead
    of leaving them as bytes beside the stored ``.png``. ``extra`` adds ``{extension: fn(bytes)}``
    (never for pickle-like extensions). Audio members are whole decoded streams; for the exact
    samples our loaders give, use :func:`wds_sample_decoder` instead.
    """
    return WdsDecoder(decode_payload=decode_payload, extra=extra)


#: a sample plan: member extension -> (schema field, decoder), for the members the schema decodes
_Plan = dict[str, tuple[Field, FieldDecoder]]


class WdsSampleDecoder:
    """``.map()`` function: an undecoded webdataset sample to what our loaders give, member by member.

    The members the set's schema declares with a decoder (payload, coded tracks, attachments) are
    decoded as :func:`pipeline.loaders.load` decodes them: images as uint8 (H, W, 3) (a learned
    codec's stored ``.png`` unless ``decode_payload``), audio as float32 ``(channels, samples)`` at
    the source's rate and length. Every other member goes through :class:`WdsDecoder`.
    """

    def __init__(self, *, decode_payload: bool = False, extra: Mapping[str, Decoder] | None = None,
                 index: SetIndex | None = None, root: str | os.PathLike | None = None,
                 dataset: str | None = None, split: str | None = None):
        if (root is None) != (dataset is None) or (root is None) != (split is None):
            raise ConfigError("wds_sample_decoder: give root, dataset and split together (or none of them)")
        if index is not None and root is not None:
            raise ConfigError("wds_sample_decoder: give a set index or root/dataset/split, not both")
        self.members = WdsDecoder(decode_payload=decode_payload, extra=extra)
        self.decode_payload = decode_payload
        self.extra = dict(extra or {})
        self.index, self.where = index, (None if root is None else (os.fspath(root), dataset, split))
        self._plans: dict[tuple[Any, ...], ViewDecoder] = {}
        self._indexes: dict[str, SetIndex] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_plans": {}, "_indexes": {}}

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        record = sample.get("json")
        if isinstance(record, (bytes, bytearray)):
            record = strict_json(bytes(record))
        if not isinstance(record, dict) or not isinstance(record.get("codec"), str):
            raise SampleError(f"{sample.get('__key__')}: no .json record naming its codec")
        members = [k for k, v in sample.items() if not k.startswith("__") and isinstance(v, (bytes, bytearray))]
        plan = self._plan(record["codec"], members)
        out: dict[str, Any] = {}
        for k, v in sample.items():
            if k.startswith("__") or not isinstance(v, (bytes, bytearray)):
                out[k] = v
            elif k == "json":
                out[k] = record
            elif k in plan:
                field, fn = plan[k]
                out[k] = _hand_out(run_decoder(fn, {k: bytes(v)}, k, record), field)
            else:
                out[k] = self.members(k, bytes(v))
        return out

    def _plan(self, canonical: str, members: list[str]) -> _Plan:
        """Which members the schema decodes, and how; the decoders are built once per setting and process."""
        index = self._index(canonical, members)
        key = (canonical, index.modality, tuple(f.ext for f in index.schema))
        if key not in self._plans:
            from ..codecs.spec import parse_spec

            self._plans[key] = ViewDecoder(index, parse_spec(canonical), self.extra,
                                           decode_payload=self.decode_payload, image_format="numpy")
        view = self._plans[key]
        plan: _Plan = {}
        for m in view.payload:  # alternatives: the first present member is the payload
            if m.ext in members:
                plan[m.ext] = (m.field, m.fn)
                break
        plan.update((m.ext, (m.field, m.fn)) for m in [*(m for _, m in view.coded), *view.attachments])
        return plan

    def _index(self, canonical: str, members: list[str]) -> SetIndex:
        """The set's own index when given or readable, else the schema the codec and its modality declare."""
        if self.index is not None:
            if self.index.codec != canonical:
                raise SampleError(f"record names codec {canonical!r}, the set index is {self.index.codec}")
            return self.index
        if self.where is not None:
            if canonical not in self._indexes:
                from ..store.index import read_index
                from .storage import Storage

                root, dataset, split = self.where
                self._indexes[canonical] = read_index(Storage(root, cache_dir=False), str(dataset), str(split),
                                                      canonical)
            return self._indexes[canonical]
        return _schema_index(canonical, members)


def _schema_index(canonical: str, members: list[str]) -> SetIndex:
    """A set index holding only the payload schema of ``canonical``, for a sample read without its set.

    The modality is the one whose declared payload member the sample holds (the lossless reference
    serves several); coded tracks are the members named ``<track>.<payload extension>``.
    """
    from ..codecs import get_codec
    from ..codecs.spec import parse_spec

    spec = parse_spec(canonical)
    codec = get_codec(spec.name)
    candidates = _modality_names(codec)
    held = [m for m in candidates
            if any(f.ext in members for f in _declared_schema(codec, m, spec=spec) if f.role == "payload")]
    modality = (held or candidates)[0]
    coded = [f.ext for f in _declared_schema(codec, modality, spec=spec) if f.role == "payload" and f.decoder][-1]
    tracks = tuple(k.removesuffix(f".{coded}") for k in members if k.endswith(f".{coded}"))
    return SetIndex(dataset="", split="", codec=canonical, tag="", modality=modality, shards=(),
                    schema=_declared_schema(codec, modality, tracks, spec))


def wds_sample_decoder(*, decode_payload: bool = False, extra: Mapping[str, Decoder] | None = None,
                       index: SetIndex | None = None, root: str | os.PathLike | None = None,
                       dataset: str | None = None, split: str | None = None) -> WdsSampleDecoder:
    """The function for ``webdataset.WebDataset(urls).map(pipeline.loaders.wds_sample_decoder())``.

    Apply it to undecoded samples (no ``.decode()`` before it): it needs the payload's bytes and
    the record to cut audio exactly as our loaders do. Same options as :func:`wds_decoder`, plus the
    set's schema: its ``index`` (a :class:`~pipeline.store.index.SetIndex`), or ``root``, ``dataset``
    and ``split`` to read each setting's ``index.json`` (attachments such as MUSDB's stems are then
    checked against the record as our loaders do). Without either, the schema the record's codec
    declares is used.
    """
    return WdsSampleDecoder(decode_payload=decode_payload, extra=extra, index=index, root=root,
                            dataset=dataset, split=split)
