"""Find the finished codec sets under an output folder and load their index and manifest.

A set is finished when its ``index.json`` exists (the run writes it last); folders with shards
or a manifest but no index are reported as incomplete, never summarised, since their manifest
may be missing shards still to come.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..loaders.storage import Storage
from ..store import layout
from ..store.index import NotASetIndex, SetIndex, read_index
from ..store.storage import OutputStore, open_store


@dataclass
class CodecSet:
    """One codec setting's output folder (a path, or a URL in an object store): its typed index, and its
    manifest as a DataFrame; ``store`` reads the rest (eval results, tar headers)."""

    dataset: str
    split: str
    tag: str
    folder: str
    index: SetIndex
    manifest: Any  # pandas.DataFrame
    store: OutputStore

    @property
    def codec(self) -> str:
        return self.index.codec

    @property
    def family(self) -> str:
        """The curve a setting belongs to: its codec name (all ``jpeg:quality=*`` form the jpeg curve)."""
        return self.index.family

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.index.spec.get("params", {}))

    @property
    def modality(self) -> str:
        return self.index.modality


def open_output(out_root: str | os.PathLike) -> OutputStore:
    """The store of an output to read (a folder or an fsspec URL); one line (ConfigError) when it
    cannot be read: not a folder, a missing bucket, missing credentials, an unreachable endpoint."""
    store = open_store(os.fspath(out_root))
    if store.remote:
        store.check_readable()
    elif not os.path.isdir(store.root):
        raise ConfigError(f"{store.root} is not a folder")
    return store


def _set_folders(store: OutputStore) -> dict[tuple[str, str, str], set[str]]:
    """(dataset, split, tag) -> names of the files directly in ``OUT/<dataset>/<split>/<tag>/``."""
    folders: dict[tuple[str, str, str], set[str]] = {}
    prefix = store.join("")
    for loc in store.glob(store.join("*", "*", "*", "*")):
        parts = loc[len(prefix):].replace(os.sep, "/").split("/")
        if len(parts) == 4 and not any(p.startswith(".") for p in parts[:3]):
            folders.setdefault((parts[0], parts[1], parts[2]), set()).add(parts[3])
    return folders


def find_sets(out_root: str | os.PathLike, dataset: str | None = None,
              split: str | None = None) -> tuple[list[CodecSet], list[str]]:
    """Finished sets under ``OUT/<dataset>/<split>/<tag>/`` (optionally one dataset/split), and the
    folders that look like unfinished sets. Raises ConfigError when nothing matches."""
    import pyarrow.parquet as pq

    store = open_output(out_root)
    root = Storage(store.root, cache_dir=False)
    sets: list[CodecSet] = []
    incomplete: list[str] = []
    for (ds, sp, tag), names in sorted(_set_folders(store).items()):
        if (dataset is not None and ds != dataset) or (split is not None and sp != split):
            continue
        folder = store.join(ds, sp, tag)
        if layout.INDEX not in names:
            if layout.MANIFEST in names or any(n.endswith((".tar", ".tar.gz")) for n in names):
                incomplete.append(folder)
            continue
        try:
            index = read_index(root, ds, sp, tag=tag)
        except NotASetIndex:
            continue  # some other JSON file that happens to be called index.json
        if index.manifest not in names:
            raise ConfigError(f"{folder} has an index.json but no {index.manifest}")
        frame = pq.read_table(io.BytesIO(store.read_bytes(store.child(folder, index.manifest)))).to_pandas()
        sets.append(CodecSet(ds, sp, tag, folder, index, frame, store))
    if not sets:
        where = "/".join(x for x in (dataset, split) if x) or "any dataset"
        raise ConfigError(f"no finished codec set (OUT/<dataset>/<split>/<tag>/index.json) for {where} under "
                          f"{store.root}" + (f"; {len(incomplete)} unfinished" if incomplete else ""))
    return sets, incomplete
