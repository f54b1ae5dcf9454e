"""Where a run writes: a local folder, or any fsspec URL (``s3://bucket/prefix``, ``gs://...``).

Local folders keep the writer's scheme: a temporary sibling (``.NAME.tmp-*``) renamed into place.
Object stores have no rename, but a PUT of a whole object is atomic (S3, GCS, Azure Blob): an
object appears complete or not at all. So a shard is written to a local staging file, its size
and SHA-256 measured there, and uploaded under its final key in one piece; stats, manifest and
index are uploaded whole the same way, in the same order (tar, stats, manifest, index last).
Other remote file systems (SFTP, HDFS, ...) get an upload to a temporary name and a move.

Credentials and endpoints come from the usual places of each backend (for s3fs: ``AWS_*``
variables, ``~/.aws``, or ``FSSPEC_S3_ENDPOINT_URL`` for an S3-compatible server); every Dask
worker needs them too. A store is picklable: the filesystem is reopened in each process.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from . import layout
from ..errors import OutputError
from .writer import (TMP_MARK, ShardWriter, dumps, file_digest, output_errors, publish_bytes, remove_stale_temps,
                     tmp_path)

#: protocols whose PUT publishes a whole object atomically (no temporary name needed)
ATOMIC_PUT = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})
#: local folder for shards on their way to a remote store (``$MPQ_STAGING``, else the system temp folder)
STAGING_ENV = "MPQ_STAGING"


def is_url(out: str | os.PathLike) -> bool:
    return "://" in os.fspath(out)


class OutputStore:
    """The output root of a run: a local folder or a remote URL, with atomic publishing for both."""

    def __init__(self, out: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None):
        out = os.fspath(out)
        self.protocol = out.split("://", 1)[0] if is_url(out) else "file"
        if self.protocol in ("file", "local"):
            self.remote = False
            self.root = out.split("://", 1)[1] if is_url(out) else out
        else:
            self.remote = True
            self.root = out.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs = None
        self._pid = -1

    # ------------------------------------------------------------------ plumbing

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fs"] = None  # async filesystems must not cross processes
        return state

    @property
    def fs(self):
        """The fsspec filesystem (remote stores only), opened once per process."""
        if self._fs is None or self._pid != os.getpid():
            try:
                import fsspec

                self._fs = fsspec.filesystem(self.protocol, **self.storage_options)
            except ImportError as exc:
                raise OutputError(f"cannot write {self.root}: {exc} (for s3:// install s3fs)") from None
            except ValueError as exc:  # unknown protocol
                raise OutputError(f"cannot write {self.root}: {exc}") from None
            self._pid = os.getpid()
        return self._fs

    def join(self, *parts: str) -> str:
        if self.remote:
            return "/".join([self.root, *parts])
        return os.path.join(self.root, *parts)

    def set_folder(self, dataset: str, split: str, tag: str) -> str:
        return self.join(dataset, split, tag)

    @staticmethod
    def _child(folder: str, name: str) -> str:
        return f"{folder}/{name}" if is_url(folder) else os.path.join(folder, name)

    def child(self, folder: str, name: str) -> str:
        """``folder/name``; ``folder`` as returned by :meth:`set_folder`."""
        return self._child(folder, name)

    @contextlib.contextmanager
    def _writing(self, where: str, verb: str = "write") -> Iterator[None]:
        try:
            yield
        except OutputError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot {verb} {where}: {exc.strerror or exc}") from exc
        except Exception as exc:
            if not _is_client_error(exc):
                raise
            raise OutputError(f"cannot {verb} {where}: {_remote_reason(exc)}") from exc

    def failures(self, where: str) -> contextlib.AbstractContextManager[None]:
        """Turn a failure of the storage (an OSError, or the remote client's own: network, credentials)
        into an OutputError naming ``where`` in one line; other errors pass."""
        return self._writing(where, "read or write")

    def _fresh(self, loc: str) -> None:
        """Forget cached listings: other processes (workers) write here too."""
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(loc.rsplit("/", 1)[0])

    # ------------------------------------------------------------------ reading

    def is_file(self, loc: str) -> bool:
        if not self.remote:
            return os.path.isfile(loc)
        self._fresh(loc)
        try:
            return bool(self.fs.isfile(loc))
        except (FileNotFoundError, PermissionError):
            return False

    def read_bytes(self, loc: str) -> bytes:
        if not self.remote:
            return Path(loc).read_bytes()
        return self.fs.cat_file(loc)

    def size(self, loc: str) -> int:
        if not self.remote:
            return os.path.getsize(loc)
        self._fresh(loc)
        return int(self.fs.size(loc))

    def mtime_ns(self, loc: str) -> int | None:
        """When a stored file was last written (ns since the epoch), or None when the storage cannot say."""
        if not self.remote:
            return os.stat(loc).st_mtime_ns
        try:
            return int(self.fs.modified(loc).timestamp() * 1e9)
        except Exception:  # noqa: BLE001 - not every filesystem records it; the caller then decides
            return None

    def digest(self, loc: str) -> tuple[int, str]:
        """(size, sha256 hex) of a stored file, streamed (remote shards are read back once)."""
        if not self.remote:
            return file_digest(Path(loc))
        h = hashlib.sha256()
        size = 0
        with self.fs.open(loc, "rb", block_size=1 << 22) as fh:
            while block := fh.read(1 << 22):
                h.update(block)
                size += len(block)
        return size, h.hexdigest()

    def open(self, loc: str):
        """A seekable binary file of a stored file (remote: ranged reads, nothing kept)."""
        if not self.remote:
            return open(loc, "rb")
        return self.fs.open(loc, "rb", block_size=1 << 22)

    def glob(self, pattern: str) -> list[str]:
        """Sorted locations matching ``pattern`` (a location with ``*``), in this store's spelling."""
        if not self.remote:
            import glob

            return sorted(glob.glob(pattern))
        self._fresh(pattern.split("*", 1)[0] + "x")
        return sorted(p if "://" in p else f"{self.protocol}://{p}" for p in self.fs.glob(pattern))

    def file_sizes(self, folder: str) -> dict[str, int]:
        """{name: bytes} of the files directly in ``folder`` (none when it does not exist)."""
        if not self.remote:
            if not os.path.isdir(folder):
                return {}
            return {e.name: e.stat().st_size for e in os.scandir(folder) if e.is_file()}
        self._fresh(self._child(folder, "x"))
        try:
            found = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return {}
        return {d["name"].rstrip("/").rsplit("/", 1)[-1]: int(d.get("size") or 0)
                for d in found if d.get("type") == "file"}

    def check_readable(self) -> None:
        """Fail with one clear line (ConfigError) when the store cannot be read at all: a missing
        bucket or folder, missing or refused credentials, an unreachable endpoint."""
        from ..errors import ConfigError

        if not self.remote:
            return  # a local folder's readers say what is missing there
        try:
            fs = self.fs
            fs.invalidate_cache(self.root)
            fs.ls(self.root.split("://", 1)[1].split("/", 1)[0], detail=False)  # the bucket itself
            if not fs.exists(self.root):
                raise FileNotFoundError(self.root)
        except OutputError as exc:
            raise ConfigError(str(exc).replace("cannot write", "cannot read", 1)) from None
        except FileNotFoundError:
            bucket = self.root.split("://", 1)[1].split("/", 1)[0]
            what = (f"bucket {bucket} does not exist" if not _bucket_exists(fs, bucket)
                    else "nothing stored under this prefix")
            raise ConfigError(f"cannot read {self.root}: {what}") from None
        except Exception as exc:  # noqa: BLE001 - credentials, permissions, network: one line naming the cause
            raise ConfigError(f"cannot read {self.root}: {_remote_reason(exc)}") from None

    def names(self, folder: str, prefix: str) -> list[str]:
        """Sorted names in ``folder`` starting with ``prefix`` (none when the folder does not exist)."""
        if not self.remote:
            return sorted(p.name for p in Path(folder).glob(f"{prefix}*")) if os.path.isdir(folder) else []
        self._fresh(self._child(folder, "x"))
        try:
            found = self.fs.glob(self._child(folder, prefix) + "*")
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found)

    # ------------------------------------------------------------------ writing

    def publish_file(self, loc: str, write: Callable[[Path], object]) -> None:
        """Publish the file ``write(path)`` makes under ``loc`` whole: a temporary sibling renamed into
        place when local; when remote, a local staging file uploaded in one piece."""
        if not self.remote:
            with output_errors(os.path.dirname(loc) or "."):
                os.makedirs(os.path.dirname(loc) or ".", exist_ok=True)
                tmp = tmp_path(Path(loc))
                try:
                    write(tmp)
                    os.replace(tmp, loc)
                finally:
                    tmp.unlink(missing_ok=True)
            return
        with staging_folder() as folder:
            local = folder / loc.rsplit("/", 1)[-1]
            write(local)
            self.upload(local, loc)

    def publish_bytes(self, loc: str, data: bytes) -> None:
        """Put ``data`` under ``loc`` atomically: a reader sees the old object, the new one, or none."""
        if not self.remote:
            publish_bytes(Path(loc), data)
            return
        with self._writing(loc.rsplit("/", 1)[0]):
            if self.protocol in ATOMIC_PUT:
                self.fs.pipe_file(loc, data)
            else:
                tmp = _tmp_sibling(loc)
                try:
                    self.fs.pipe_file(tmp, data)
                    self.fs.mv(tmp, loc)
                finally:
                    with contextlib.suppress(Exception):
                        if self.fs.exists(tmp):
                            self.fs.rm_file(tmp)

    def write_json(self, loc: str, obj: Any) -> None:
        self.publish_bytes(loc, dumps(obj) + b"\n")

    def shard_writer(self, loc: str, compression: str | None = None) -> ShardWriter:
        """A writer whose ``close()`` publishes the tar under ``loc`` (a rename, or one upload)."""
        if not self.remote:
            return ShardWriter(Path(loc), compression)
        return _UploadingShardWriter(self, loc, compression)

    def upload(self, local: Path, loc: str) -> None:
        """Upload a finished local file under ``loc`` in one piece."""
        with self._writing(loc.rsplit("/", 1)[0]):
            if self.protocol in ATOMIC_PUT:  # multipart uploads too appear only when completed
                self.fs.put_file(str(local), loc)
            else:
                tmp = _tmp_sibling(loc)
                try:
                    self.fs.put_file(str(local), tmp)
                    self.fs.mv(tmp, loc)
                finally:
                    with contextlib.suppress(Exception):
                        if self.fs.exists(tmp):
                            self.fs.rm_file(tmp)

    def remove(self, loc: str) -> None:
        """Delete ``loc`` if it exists."""
        if not self.remote:
            with self._writing(os.path.dirname(loc)):
                Path(loc).unlink(missing_ok=True)
            return
        with self._writing(loc.rsplit("/", 1)[0]):
            try:
                self.fs.rm_file(loc)
            except FileNotFoundError:
                pass

    def remove_temps(self, folder: str, name: str | None = None) -> int:
        """Delete temporary files a killed run left (of shard ``name``, or all of the folder)."""
        if not self.remote:
            if name is not None:
                remove_stale_temps(Path(folder), name)
                return 0
            from .writer import remove_all_temps

            return remove_all_temps(Path(folder))
        if self.protocol in ATOMIC_PUT:
            return 0  # nothing is ever written there under a temporary name
        prefixes = [f".{name}", f".{layout.attempt_name(name)}"] if name else ["."]
        stale = sorted({n for prefix in prefixes for n in self.names(folder, prefix) if TMP_MARK in n})
        for n in stale:
            self.remove(self._child(folder, n))
        return len(stale)

    def check_writable(self, folder: str) -> None:
        """Create ``folder`` and write and delete a probe there: a read-only, full or missing location
        fails here with one clear line, before any work."""
        probe = self._child(folder, f".mpq-write-check{TMP_MARK}{uuid.uuid4().hex[:8]}")
        if not self.remote:
            with output_errors(folder):
                os.makedirs(folder, exist_ok=True)
        self.publish_bytes(probe, b"probe\n")
        self.remove(probe)


def _bucket_exists(fs: Any, bucket: str) -> bool:
    try:
        return bool(fs.exists(bucket))
    except Exception:  # noqa: BLE001 - cannot even ask: say the bucket is not there
        return False


def _is_client_error(exc: BaseException) -> bool:
    """An error of a remote store's client library (botocore, aiohttp, google, azure), not of the caller."""
    module = type(exc).__module__ or ""
    return module.split(".", 1)[0] in ("botocore", "aiobotocore", "aiohttp", "google", "azure", "s3fs", "gcsfs")


def _remote_reason(exc: BaseException) -> str:
    """What went wrong talking to a remote store, in one line (credentials and network named as such)."""
    name = type(exc).__name__
    text = " ".join(str(exc).split()) or name
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return (f"no credentials ({text}); give them as the backend reads them (for s3://: AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials)")
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text:
        return f"access denied ({text}); check the credentials and their permissions"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or isinstance(
            exc, (ConnectionError, TimeoutError)):
        return f"cannot reach the store ({text})"
    return f"{name}: {text}"


def _tmp_sibling(loc: str) -> str:
    folder, name = loc.rsplit("/", 1)
    return f"{folder}/.{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def staging_folder() -> Iterator[Path]:
    """A fresh local folder for files on their way to a remote store (``$MPQ_STAGING`` or the temp folder),
    removed afterwards."""
    base = os.environ.get(STAGING_ENV) or None
    with output_errors(base or tempfile.gettempdir()):
        if base:
            os.makedirs(base, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="mpq-staging-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _UploadingShardWriter(ShardWriter):
    """A shard written to a local staging folder and uploaded whole on close."""

    def __init__(self, store: OutputStore, loc: str, compression: str | None = None):
        self.store, self.loc = store, loc
        base = os.environ.get(STAGING_ENV) or None
        with output_errors(base or tempfile.gettempdir()):
            if base:
                os.makedirs(base, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix="mpq-staging-", dir=base))
        try:
            super().__init__(self.staging / loc.rsplit("/", 1)[-1], compression)
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise

    def close(self) -> tuple[int, str]:
        try:
            size, digest = super().close()
            self.store.upload(self.final, self.loc)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        return size, digest

    def abort(self) -> None:
        try:
            super().abort()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)


@functools.lru_cache(maxsize=16)
def open_store(out: str) -> OutputStore:
    """The store for a run's ``out`` (cached per process; the filesystem itself reopens after a fork)."""
    return OutputStore(out)
