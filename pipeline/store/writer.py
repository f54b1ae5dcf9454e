"""Deterministic WebDataset tar shards, published atomically.

A shard is written under a temporary name in its final folder and renamed when complete, so no
partial tar ever stands under a final name; its ``_stats.json`` is written (the same way) after
the tar, so a shard counts as done only when both exist and agree. Tar headers carry no time,
user or group, so the same samples give byte-identical shards.

Any failure to write (a read-only or full file system, no permission) is raised as
:class:`~pipeline.errors.OutputError` naming the folder, after the temporary file is removed.
"""
from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import io
import json
import os
import tarfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import layout
from ..errors import OutputError

TMP_MARK = ".tmp-"


@contextlib.contextmanager
def output_errors(where: Path | str) -> Iterator[None]:
    """Turn an OSError while writing into an OutputError that says where and why, in one line."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write {where}: {exc.strerror or exc}") from exc


def dumps(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, no NaN/Infinity (those must be None by then)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def tmp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_bytes(final: Path, data: bytes) -> None:
    """Write bytes to a temporary sibling, fsync, and rename onto ``final``."""
    tmp = tmp_path(final)
    try:
        with output_errors(final.parent):
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def write_json(final: Path, obj: Any) -> None:
    publish_bytes(final, dumps(obj) + b"\n")


class ShardWriter:
    """Collects samples (``{key}.{ext}`` members) and publishes one tar atomically on close.

    ``compression="gzip"`` writes the tar through a deterministic gzip stream (fixed level, header
    with no time and no file name), so the same samples still give byte-identical ``.tar.gz`` files.
    """

    def __init__(self, final: Path, compression: str | None = None):
        if compression not in (None, "gzip"):
            raise ValueError(f"unknown shard compression {compression!r}")
        self.final = final
        self.tmp = tmp_path(final)
        with output_errors(final.parent):
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.tmp, "wb")
        self._gz = None
        target: io.BufferedIOBase = self._fh
        if compression == "gzip":
            from .layout import GZIP_LEVEL

            self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._fh, mtime=0, compresslevel=GZIP_LEVEL)
            target = self._gz
        self._tar = tarfile.open(fileobj=target, mode="w", format=tarfile.PAX_FORMAT)
        self.count = 0
        self._keys: set[str] = set()

    def add(self, key: str, members: Iterable[tuple[str, bytes]]) -> None:
        """Add one sample; ``members`` are (extension, bytes) in the order they are stored."""
        if "." in key or "/" in key or key in self._keys:
            raise ValueError(f"bad or repeated key {key!r}")
        self._keys.add(key)
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with output_errors(self.final.parent):
                self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> tuple[int, str]:
        """Finish the tar, rename it into place, and return (bytes, sha256) of the published file."""
        with output_errors(self.final.parent):
            self._tar.close()
            if self._gz is not None:
                self._gz.close()  # writes the gzip trailer; leaves self._fh open
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            size, digest = file_digest(self.tmp)
            os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        return size, digest

    def abort(self) -> None:
        """Drop the temporary file; never raises (it runs while another error is on its way out)."""
        for close in (self._tar.close, *((self._gz.close,) if self._gz is not None else ()), self._fh.close):
            with contextlib.suppress(Exception):
                close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def remove_stale_temps(folder: Path, name: str) -> None:
    """Delete temporary files a killed run left for ``name`` (they never stand under a final name): of its
    shard, its stats and its attempt marker (a worker killed while writing the marker leaves that one)."""
    if folder.is_dir():
        finals = [f"{name}{suffix}" for suffix in (*layout.SHARD_EXTS, layout.STATS_SUFFIX)]
        for final in (*finals, layout.attempt_name(name)):
            for p in folder.glob(f".{glob.escape(final)}{TMP_MARK}*"):
                p.unlink(missing_ok=True)


def remove_all_temps(folder: Path) -> int:
    """Delete every temporary file a killed run left in a set's folder (call before its tasks start)."""
    removed = 0
    if folder.is_dir():
        for p in folder.glob(f".*{TMP_MARK}*"):
            p.unlink(missing_ok=True)
            removed += 1
    return removed
