"""Checkpoints of learned codecs: where they are looked for, how they are fetched, checked and loaded.

* Location: the run's weights folder (``--weights-dir``, ``TranscodeConfig.weights_dir``, default
  ``$MPQ_WEIGHTS_DIR`` on the client; see :mod:`pipeline.codecs.runtime`) when set, else the codec
  family's cache: torch hub's ``$TORCH_HOME/hub/checkpoints`` for CompressAI, so files already
  downloaded by CompressAI or torch are found. A path is no codec setting, so it never
  appears in a spec or a tag.
* Fetching: a missing file is downloaded into that folder from the URL its zoo publishes, unless
  the run is offline (``--offline``, default ``$MPQ_OFFLINE``); when that fails,
  :class:`MissingWeightsError` names the file, the URL and the path to put it at. Downloads go to
  a temporary name and are renamed when checked, so concurrent workers never see a partial file.
* Checking: zoo file names end in ``-<first hex digits of the file's SHA-256>`` (torch hub's
  convention); a file whose hash does not start with them is refused, downloaded or pre-placed.
* Loading: ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only,
  never arbitrary objects.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import ConfigError, MissingWeightsError

from .runtime import OFFLINE_ENV, WEIGHTS_ENV, current

DOWNLOAD_TIMEOUT_S = 60.0

# torch hub's convention: "<name>-<hex prefix of sha256>.<ext>", e.g. "mbt2018-3-22901978.pth.tar"
_HASH_RE = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9.]+$")

_digests: dict[tuple[str, int, int], str] = {}
_digest_lock = threading.Lock()


class WeightsHashError(ConfigError):
    """A checkpoint's content does not match the hash its name carries: refused."""


def weights_dir_override() -> Path | None:
    """The run's weights folder (outside a run: ``$MPQ_WEIGHTS_DIR``) as a path, or None."""
    raw = current().weights_dir
    return Path(raw).expanduser() if raw else None


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where CompressAI's zoo stores files."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def offline() -> bool:
    """Whether the run forbids downloads (outside a run: ``$MPQ_OFFLINE``)."""
    return current().offline


def hash_prefix(filename: str) -> str | None:
    """The hex SHA-256 prefix a zoo file name carries, or None when it carries none."""
    m = _HASH_RE.search(filename)
    return m.group(1) if m else None


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, remembered per (path, size, mtime) so a worker hashes each file once."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _digest_lock:
        if key in _digests:
            return _digests[key]
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    digest = h.hexdigest()
    with _digest_lock:
        _digests[key] = digest
    return digest


def verify(path: str | Path, prefix: str | None) -> None:
    """Refuse a file whose SHA-256 does not start with ``prefix`` (None: nothing to check against)."""
    if prefix is None:
        return
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        raise WeightsHashError(f"checkpoint {path} has SHA-256 {digest[:16]}..., but its name says it starts "
                               f"with {prefix}: refused (a corrupted or different file); delete it and download "
                               f"it again")


def _download(url: str, dst: Path, prefix: str | None, timeout: float) -> None:
    """Stream ``url`` into a temporary sibling of ``dst``, check the hash, then rename into place."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    h = hashlib.sha256()
    sys.stderr.write(f"Downloading {url} to {dst}\n")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            while block := resp.read(1 << 20):
                out.write(block)
                h.update(block)
        digest = h.hexdigest()
        if prefix is not None and not digest.startswith(prefix):
            raise WeightsHashError(f"downloaded {url} has SHA-256 {digest[:16]}..., but its name says it starts "
                                   f"with {prefix}: refused")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(url: str, directory: str | Path, *, what: str, check_hash: bool = True,
          timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The checked local path of the file ``url`` names, in ``directory``; downloaded when missing.

    ``what`` says which setting needs it (for messages). Raises :class:`MissingWeightsError` when the
    file is absent and cannot be downloaded, :class:`WeightsHashError` when its hash is wrong.
    """
    filename = os.path.basename(urlparse(url).path)
    path = Path(directory) / filename
    prefix = hash_prefix(filename) if check_hash else None
    if path.is_file():
        verify(path, prefix)
        return path
    hint = (f"Download {url} on a machine with internet access and put it at {path} (or into the folder "
            f"given by --weights-dir / ${WEIGHTS_ENV})")
    if offline():
        raise MissingWeightsError(f"{what}: weights file {filename} is not in {directory} and downloads are off "
                                  f"(--offline / ${OFFLINE_ENV}). {hint}")
    try:
        _download(url, path, prefix, timeout)
    except WeightsHashError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise MissingWeightsError(f"{what}: weights file {filename} is not in {directory} and could not be "
                                  f"downloaded ({reason}). {hint}") from None
    return path


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's tensors without unpickling arbitrary objects.

    Accepts a plain state dict or a training checkpoint holding one under ``"state_dict"``.
    """
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), None)
        if detail is None:  # not a pickle at all
            raise ConfigError(f"checkpoint {path} cannot be read: not a torch checkpoint") from None
        raise ConfigError(f"checkpoint {path} holds more than tensors and is refused (only weights are "
                          f"loaded, never pickled objects): {detail.split('. ')[0]}") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ConfigError(f"checkpoint {path} cannot be read: {exc}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"checkpoint {path} is not a state dict of tensors")
    return dict(obj)
