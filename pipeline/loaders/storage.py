"""Where shards are read from: a local folder, or any fsspec URL with a local cache.

Remote shards (``s3://``, ``gs://``, ``https://``, ...) are downloaded once into the cache folder,
checked against the size and SHA-256 that ``index.json`` records, and renamed into place; a
file lock makes the workers and ranks of one machine share a single download. The cache is
content-addressed (the hash is in the file name), so a re-run that changed a shard can never be
served a stale copy. Local folders are read in place.
"""
from __future__ import annotations

import os
import uuid
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

from ..errors import SampleError
from ..store.writer import file_digest

#: decompressed ``.tar.gz`` shards up to this size are kept in memory, larger ones in a temporary file
SPOOL_BYTES = 64 << 20

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "mpq-pipeline", "shards")


def _is_local(protocol: str | tuple[str, ...]) -> bool:
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return bool({"file", "local"} & set(protocols))


class Storage:
    """A root folder or URL; picklable (the filesystem is reopened in each worker)."""

    def __init__(self, root: str | os.PathLike, *, cache_dir: str | os.PathLike | None | bool = None,
                 storage_options: Mapping[str, Any] | None = None):
        self.root = os.fspath(root)
        self.storage_options = dict(storage_options or {})
        self._fs = None
        self._pid = os.getpid()
        fs, base = self._open()
        self.local = _is_local(fs.protocol)
        self.base = base.rstrip("/") if not self.local else os.path.abspath(base)
        if self.local or cache_dir is False:
            self.cache_dir: str | None = None
        else:
            self.cache_dir = DEFAULT_CACHE if cache_dir is None or cache_dir is True else os.fspath(cache_dir)

    def _open(self):
        import fsspec

        if self._fs is None or self._pid != os.getpid():  # async filesystems must not cross a fork
            self._fs, base = fsspec.core.url_to_fs(self.root, **self.storage_options)
            self._pid = os.getpid()
            return self._fs, base
        return self._fs, self.base

    @property
    def fs(self):
        return self._open()[0]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fs"] = None
        return state

    def url(self, *parts: str) -> str:
        if self.local:
            return os.path.join(self.base, *parts)
        return "/".join([self.base, *parts])

    def display(self, *parts: str) -> str:
        """A path or URL for messages."""
        if self.local:
            return self.url(*parts)
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        if self.local:
            return os.path.exists(self.url(*parts))
        return self.fs.exists(self.url(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        if self.local:
            with open(self.url(*parts), "rb") as fh:
                return fh.read()
        return self.fs.cat_file(self.url(*parts))

    def listdir(self, *parts: str) -> list[str]:
        """Names of sub-folders (for messages listing what exists); empty when the store cannot list."""
        try:
            if self.local:
                where = self.url(*parts)
                return sorted(n for n in os.listdir(where) if os.path.isdir(os.path.join(where, n)))
            return sorted(os.path.basename(p.rstrip("/")) for p in self.fs.ls(self.url(*parts), detail=False))
        except (OSError, NotImplementedError, ValueError):
            return []

    def open_shard(self, parts: tuple[str, ...], size: int, sha256: str, *, verify: bool = False) -> BinaryIO:
        """An open binary file of one shard: in place when local, else from the cache (fetched once).

        A ``.tar.gz`` shard (``--shard-compression gzip``) is decompressed, streaming, into a
        seekable temporary file: gzip has no random access, and the readers seek. Up to
        :data:`SPOOL_BYTES` of tar stay in memory, larger shards spill to the temporary folder
        (``$TMPDIR``), so a shard of long tracks with lossless stems does not fill the memory.
        """
        fh = self._open_stored(parts, size, sha256, verify=verify)
        if not parts[-1].endswith(".tar.gz"):
            return fh
        import gzip
        import shutil
        import tempfile
        import zlib

        out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, prefix="mpq-shard-")
        try:
            with fh, gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                shutil.copyfileobj(gz, out, 1 << 20)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            out.close()
            raise SampleError(f"{self.display(*parts)}: cannot decompress: {exc}") from None
        except BaseException:
            out.close()
            raise
        out.seek(0)
        return out  # type: ignore[return-value]  # a SpooledTemporaryFile reads like the BinaryIO promised

    def _open_stored(self, parts: tuple[str, ...], size: int, sha256: str, *, verify: bool = False) -> BinaryIO:
        if self.local:
            path = self.url(*parts)
            if verify:
                _verify_file(path, size, sha256)
            try:
                return open(path, "rb")
            except OSError as exc:
                raise SampleError(f"cannot open shard {path}: {exc.strerror or exc}") from None
        if self.cache_dir is None:  # streamed: ranged reads through fsspec, nothing kept
            return self.fs.open(self.url(*parts), "rb", block_size=1 << 22)
        return open(self.fetch(parts, size, sha256), "rb")

    def cache_path(self, parts: tuple[str, ...], sha256: str) -> str:
        *folders, name = parts
        ext = next((e for e in (".tar.gz", ".tar") if name.endswith(e)), ".tar")
        stem = name[: -len(ext)] if name.endswith(ext) else name
        return os.path.join(self.cache_dir or "", *folders, f"{stem}.{sha256[:16]}{ext}")

    def fetch(self, parts: tuple[str, ...], size: int, sha256: str) -> str:
        """Download a shard into the cache once (under a lock), verify it, and return its local path."""
        final = self.cache_path(parts, sha256)
        if os.path.isfile(final) and os.path.getsize(final) == size:
            return final
        os.makedirs(os.path.dirname(final), exist_ok=True)
        with _FileLock(final + ".lock"):
            if os.path.isfile(final) and os.path.getsize(final) == size:  # another process fetched it
                return final
            tmp = f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                self.fs.get_file(self.url(*parts), tmp)  # each backend's own whole-file download
                got = file_digest(tmp)
                if got != (size, sha256):
                    raise SampleError(f"{self.display(*parts)}: got {got[0]} bytes with sha256 {got[1][:16]}..., "
                                      f"index.json records {size} bytes and {sha256[:16]}...")
                os.replace(tmp, final)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return final


def _verify_file(path: str, size: int, sha256: str) -> None:
    if file_digest(path) != (size, sha256):
        raise SampleError(f"{path}: size or sha256 differs from index.json (the shard changed or is damaged)")


class _FileLock:
    """An exclusive advisory lock (fcntl) where the platform has one; else no lock (a duplicate fetch)."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> "_FileLock":
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------- reading tars


BLOCK = 512
_ZERO = bytes(BLOCK)


def _octal(field: bytes, what: str) -> int:
    """A tar number: octal text, or base-256 when the high bit of the first byte is set."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            raise SampleError(f"negative {what} in a tar header")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise SampleError(f"bad {what} {text[:12]!r} in a tar header") from None


def _pax(data: bytes) -> dict[str, str]:
    """Records of a pax extended header: ``"<len> <key>=<value>\n"``."""
    out, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] not in (b"", b"\0"):
        space = data.find(b" ", pos)
        if space < 0:
            raise SampleError("bad pax header")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise SampleError("bad pax header") from None
        if length <= 0 or pos + length > len(data):
            raise SampleError("bad pax header")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out


def iter_members(fh: BinaryIO, name: str = "shard") -> Iterator[tuple[str, int, int]]:
    """(member name, data offset, size) of the regular files of a tar, in order, headers only.

    A small reader of ustar with pax ('x', 'g') and GNU long-name ('L') headers, which is what
    tarfile and other writers emit; it checks every header's checksum and is several times
    faster than :mod:`tarfile` per member. Links, folders and devices are skipped: nothing is
    ever extracted, so no member name can reach the file system.
    """
    pos = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        fh.seek(pos)
        header = fh.read(BLOCK)
        if len(header) < BLOCK:
            if not header:
                return  # no end-of-archive blocks: tolerated, as tarfile does
            raise SampleError(f"{name}: truncated tar header at byte {pos}")
        if header == _ZERO:
            return
        stored = _octal(header[148:156], "checksum")
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise SampleError(f"{name}: bad tar header checksum at byte {pos}")
        size = _octal(header[124:136], "size")
        kind = header[156:157]
        data = pos + BLOCK
        pos = data + (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in (b"x", b"L", b"g"):
            fh.seek(data)
            body = fh.read(size)
            if len(body) != size:
                raise SampleError(f"{name}: truncated tar member")
            if kind == b"x":
                pax = _pax(body)
            elif kind == b"L":
                long_name = body.split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        member = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            if prefix:
                member = f"{prefix}/{member}"
        member = pax.get("path", long_name or member)
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise SampleError(f"{name}: bad pax size") from None
            pos = data + (size + BLOCK - 1) // BLOCK * BLOCK
        pax, long_name = {}, None
        if kind in (b"0", b"\0", b"7"):
            yield member, data, size


def iter_groups(fh: BinaryIO, wanted: Iterable[int], *, name: str = "shard",
                expected: int | None = None) -> Iterator[tuple[int, str, dict[str, tuple[int, int]]]]:
    """Samples (index within the shard, key, {ext: (offset, size)}) for the wanted indices, ascending.

    A sample is the run of consecutive members sharing the key before the first dot. Only the
    headers are parsed here: the caller reads the members it needs with :func:`read_span` before
    asking for the next sample. ``expected`` is the sample count index.json records: a shard
    holding fewer samples than asked for is an error, not a short epoch.
    """
    targets = iter(sorted(set(int(w) for w in wanted)))
    target = next(targets, None)
    if target is None:
        return
    index, key = -1, None
    spans: dict[str, tuple[int, int]] = {}
    for member, offset, size in iter_members(fh, name):
        k, dot, ext = member.partition(".")
        if not dot or not k:
            continue
        if k != key:
            if key is not None and index == target:
                yield index, key, spans
                target = next(targets, None)
                if target is None:
                    return
            index, key, spans = index + 1, k, {}
        if index == target:
            if ext in spans:
                raise SampleError(f"{name}: sample {k!r} has two members .{ext}")
            spans[ext] = (offset, size)
    if key is not None and index == target:
        yield index, key, spans
        target = next(targets, None)
    if target is not None:
        raise SampleError(f"{name}: holds {index + 1} samples, sample {target} was asked for"
                          + (f" (index.json records {expected})" if expected is not None else ""))


def read_span(fh: BinaryIO, span: tuple[int, int], what: str = "member") -> bytes:
    offset, size = span
    fh.seek(offset)
    data = fh.read(size)
    if len(data) != size:
        raise SampleError(f"{what} is truncated")
    return data
