"""Find the finished codec sets under an output folder and load their index and manifest.

A set is finished when its ``index.json`` exists (the run writes it last); folders with shards
or a manifest but no index are reported as incomplete, never summarised, since their manifest
may be missing shards still to come.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..store import layout
from ..store.index import LocalRoot, NotASetIndex, SetIndex, read_index


@dataclass
class CodecSet:
    """One codec setting's output folder: its typed index, and its manifest as a DataFrame."""

    dataset: str
    split: str
    tag: str
    folder: Path
    index: SetIndex
    manifest: Any  # pandas.DataFrame

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


def find_sets(out_root: str | Path, dataset: str | None = None,
              split: str | None = None) -> tuple[list[CodecSet], list[Path]]:
    """Finished sets under ``OUT/<dataset>/<split>/<tag>/`` (optionally one dataset/split), and the
    folders that look like unfinished sets. Raises ConfigError when nothing matches."""
    import pandas as pd
    import pyarrow.parquet as pq

    root = Path(out_root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder")
    store = LocalRoot(root)
    sets: list[CodecSet] = []
    incomplete: list[Path] = []
    for folder in sorted(p for p in root.glob("*/*/*") if p.is_dir()):
        ds, sp = folder.parent.parent.name, folder.parent.name
        if (dataset is not None and ds != dataset) or (split is not None and sp != split):
            continue
        if not (folder / layout.INDEX).is_file():
            if (folder / layout.MANIFEST).is_file() or any(folder.glob("*.tar")) or any(folder.glob("*.tar.gz")):
                incomplete.append(folder)
            continue
        try:
            index = read_index(store, ds, sp, tag=folder.name)
        except NotASetIndex:
            continue  # some other JSON file that happens to be called index.json
        manifest_path = folder / index.manifest
        if not manifest_path.is_file():
            raise ConfigError(f"{folder} has an index.json but no {manifest_path.name}")
        frame: pd.DataFrame = pq.read_table(manifest_path).to_pandas()
        sets.append(CodecSet(ds, sp, folder.name, folder, index, frame))
    if not sets:
        where = "/".join(x for x in (dataset, split) if x) or "any dataset"
        raise ConfigError(f"no finished codec set (OUT/<dataset>/<split>/<tag>/index.json) for {where} under {root}"
                          + (f"; {len(incomplete)} unfinished" if incomplete else ""))
    return sets, incomplete
