"""Images: source bytes -> RGB uint8 (see :mod:`pipeline.media.image`) -> codec -> bits, bpp, PSNR, MS-SSIM."""
from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence, cast

import numpy as np
import pyarrow as pa

from ..codecs import batching, lossless, target
from ..codecs.base import Encoded, ImageCodec
from ..codecs.spec import CodecSpec
from ..errors import SampleError
from ..media.image import MAX_PIXELS, decode_to_rgb
from ..metrics import deep
from ..metrics.image import ms_ssim, mse, psnr_from_mse
from ..sources.base import RawSample
from ..store.index import Field, record
from . import ReportAxes

COLUMNS = [("width", pa.int64()), ("height", pa.int64()), ("bits", pa.int64()), ("bpp", pa.float64()),
           ("psnr", pa.float64()), ("mse", pa.float64()), ("ms_ssim", pa.float64()),
           ("target_bpp", pa.float64()), ("chosen_quality", pa.int64()),
           *[(c, pa.float64()) for c in deep.columns("image")]]


#: reports: bits per pixel against PSNR; raw images are 24-bit RGB
REPORT = ReportAxes(rate="bpp", primary="psnr", qualities=("psnr", "ms_ssim"), raw="24 bits per pixel")


def _col(frame: Any, name: str) -> np.ndarray:
    return frame[name].to_numpy(dtype=np.float64, na_value=np.nan)


def report_raw_bits(frame: Any) -> np.ndarray:
    return 24.0 * _col(frame, "width") * _col(frame, "height")


def report_storage(shard_bytes: int, frame: Any) -> dict[str, float]:
    return {"disk_bpp": 8.0 * shard_bytes / float((_col(frame, "width") * _col(frame, "height")).sum())}


def report_extras(frame: Any) -> dict[str, float]:
    """PSNR of the mean MSE (what a dataset-level PSNR usually means), next to the mean of per-image PSNRs."""
    if "mse" not in frame.columns or not len(frame):
        return {}
    mean_mse = float(np.nanmean(_col(frame, "mse")))
    return {"psnr_mse": math.inf if mean_mse == 0 else 10.0 * math.log10(255.0**2 / mean_mse)}


def schema(codec: type[ImageCodec], name: str, options: Mapping[str, Any],
           tracks: Sequence[str] = (), spec: CodecSpec | None = None) -> tuple[Field, ...]:
    """The payload and measures a set's samples carry: the codec's payload, or first the stored decoded
    pixels of a codec with ``reconstruction`` (what the metrics saw), then ``bits`` and ``bpp``.

    Stored pixels (the reference's payload, a learned codec's decoded output) are in the setting's
    lossless container (``spec``; PNG without one); the decoder name ``png`` means stored lossless
    pixels, whichever container holds them. The codec's payload is declared even when
    ``bitstream`` is off (its member is then absent), so a loader asked to decode it names the
    member it lacks.
    """
    stored = lossless.extension(lossless.container_of(spec) if spec is not None else lossless.DEFAULT)
    fields = []
    if getattr(codec, "reconstruction", False) and options.get("reconstruction", True):
        fields.append(Field(name, "payload", "image", stored, "png"))
    fields.append(Field(name, "payload", "image", stored if codec.lossless else codec.extension, "codec"))
    return (*fields, record("bits", "int", view=True), record("bpp", "float", view=True))


def prepare(raw: RawSample, options: dict[str, Any] | None = None) -> np.ndarray:
    return decode_to_rgb(raw.data, max_pixels=(options or {}).get("max_pixels", MAX_PIXELS))


def encode(codec: ImageCodec, rgb: np.ndarray, options: dict[str, Any]) -> tuple[list[tuple[str, bytes]],
                                                                                   dict[str, Any]]:
    """Encode, decode the payload back, and measure: bits from the payload, metrics from its pixels.

    Facts a codec reports in ``Encoded.info`` (a learned codec's device and library versions) are
    recorded too. A codec with ``reconstruction`` (its payload is no image format) also gets the
    decoded pixels stored in the setting's lossless container (``.png`` by default); options
    ``bitstream``/``reconstruction`` = False drop the payload or those pixels for such codecs. A
    setting with a rate target (``bpp=``) searches the codec's quality per image
    (:mod:`pipeline.codecs.target`) and records ``target_bpp`` and ``chosen_quality``.
    """
    h, w = rgb.shape[:2]
    container = getattr(codec, "container", lossless.DEFAULT)  # of the setting: a target search swaps the codec
    t0 = time.perf_counter()
    searched: dict[str, Any] = {}
    if target.target_of(codec) is not None:  # bpp=: the best quality at or under the target, per image
        codec, enc, searched = target.search(codec, lambda c: c.encode(rgb), lambda e: e.payload_bits / (w * h))
    else:
        enc = codec.encode(rgb)
    t1 = time.perf_counter()
    decs, source = batching.decode_encoded(codec, [enc])
    t2 = time.perf_counter()
    return _measure(codec, rgb, enc, decs[0], {**searched, **_decoded_from(source), "encode_s": t1 - t0,
                                                 "decode_s": t2 - t1}, options, container)


def _decoded_from(source: str | None) -> dict[str, str]:
    """``decoded_from``: whether a learned codec's stored pixels were synthesised from the latents its
    encoder kept (``latent``) or decoded from the stream (``bytes``); the same pixels either way (checked),
    so it stays out of the shard's record, like the timings (:data:`pipeline.run.task.ROW_ONLY`)."""
    return {} if source is None else {"decoded_from": source}


def _measure(codec: ImageCodec, rgb: np.ndarray, enc: Encoded, dec: np.ndarray, facts: dict[str, Any],
             options: dict[str, Any], container: str) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """Members and measures of one coded image (the one-image and the batch path share this); decoded
    pixels of a learned codec are stored in the setting's lossless ``container``."""
    h, w = rgb.shape[:2]
    if dec.shape != rgb.shape or dec.dtype != np.uint8:
        raise SampleError(f"decoded {dec.shape} {dec.dtype} differs from the encoded image {rgb.shape} uint8")
    err = mse(rgb, dec)
    timings = {k: facts.pop(k) for k in ("encode_s", "decode_s")}
    m: dict[str, Any] = {**enc.info, **facts, "width": w, "height": h, "bits": enc.payload_bits,
                         "bpp": enc.payload_bits / (w * h), "mse": err, "psnr": psnr_from_mse(err), **timings}
    if options.get("ms_ssim"):
        m["ms_ssim"] = ms_ssim(rgb, dec)
    if options.get("deep"):  # LPIPS, DISTS: timed apart, so the encode/decode timings stay comparable
        t3 = time.perf_counter()
        m.update(deep.measure(options, rgb, dec))
        m["deep_s"] = time.perf_counter() - t3
    members = [(enc.extension, enc.payload), *enc.extra]
    if codec.reconstruction:
        if options.get("reconstruction", True):
            members.append((lossless.extension(container), lossless.encode(dec, container)))
        if not options.get("bitstream", True):
            members = members[1:]
    return members, m


def batched(codec: ImageCodec, options: dict[str, Any]) -> bool:
    """Whether a setting takes the batch path: a batchable learned codec at a fixed setting.

    A rate target (``bpp=``) searches qualities image by image, and deep metrics run their own
    network: those settings are coded one image at a time.
    """
    return batching.batchable(codec) and target.target_of(codec) is None and not options.get("deep")


def encode_many(codec: ImageCodec, rgbs: Sequence[np.ndarray],
                options: dict[str, Any]) -> list[tuple[list[tuple[str, bytes]], dict[str, Any]] | Exception]:
    """:func:`encode` of each image, the network batched over images of one padded size (see
    :mod:`pipeline.codecs.batching`): the same members and measures, timings shared out over the batch.

    A batch that fails is coded again image by image, so a bad image is one error, never its batch's.
    """
    bc = cast(batching.BatchImageCodec, codec)
    keys: list[Any] = []
    for rgb in rgbs:
        try:
            keys.append(bc.batch_key(rgb))
        except Exception:  # noqa: BLE001 - coded alone below, where the error is recorded
            keys.append(None)

    def work(part: list[int]) -> list[tuple[list[tuple[str, bytes]], dict[str, Any]] | Exception]:
        if len(part) == 1:
            return [_one(codec, rgbs[part[0]], options)]
        try:
            t0 = time.perf_counter()
            encs = bc.encode_batch([rgbs[i] for i in part])
            t1 = time.perf_counter()
            decs, source = batching.decode_encoded(codec, encs)
            t2 = time.perf_counter()
            n = len(part)
            container = getattr(codec, "container", lossless.DEFAULT)
            return [_measure(codec, rgbs[i], e, d, {**_decoded_from(source), "encode_s": (t1 - t0) / n,
                                                    "decode_s": (t2 - t1) / n}, options, container)
                    for i, e, d in zip(part, encs, decs)]
        except Exception:  # noqa: BLE001 - per image again: the failing one becomes its own error row
            return [_one(codec, rgbs[i], options) for i in part]

    parts = batching.chunks(keys, bc.max_batch)
    out: list[Any] = [None] * len(rgbs)
    for part, results in zip(parts, batching.run_chunks(work, parts)):
        for i, r in zip(part, results):
            out[i] = r
    return out


def _one(codec: ImageCodec, rgb: np.ndarray, options: dict[str, Any]) -> Any:
    try:
        return encode(codec, rgb, options)
    except Exception as exc:  # noqa: BLE001 - returned: the caller turns it into the sample's error row
        return exc
