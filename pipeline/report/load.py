"""Find the finished codec sets under an output folder and load their index and manifest.

A set is finished when its ``index.json`` exists (the run writes it last); folders with shards
or a manifest but no index are reported as incomplete, never summarised, since their manifest
may be missing shards still to come.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store import layout
from ..errors import ConfigError


@dataclass
class CodecSet:
    """One codec setting's output folder: what its index says, and its manifest as a DataFrame."""

    dataset: str
    split: str
    tag: str
    folder: Path
    index: dict[str, Any]
    manifest: Any  # pandas.DataFrame

    @property
    def codec(self) -> str:
        return self.index["codec"]

    @property
    def family(self) -> str:
        """The curve a setting belongs to: its codec name (all ``jpeg:quality=*`` form the jpeg curve)."""
        return self.index.get("spec", {}).get("name") or self.codec.partition(":")[0]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.index.get("spec", {}).get("params", {}))

    @property
    def modality(self) -> str:
        if self.index.get("modality") in ("image", "audio"):
            return self.index["modality"]
        return "audio" if "kbps" in self.manifest.columns else "image"  # e.g. "any" (none) in older indexes


def find_sets(out_root: str | Path, dataset: str | None = None,
              split: str | None = None) -> tuple[list[CodecSet], list[Path]]:
    """Finished sets under ``OUT/<dataset>/<split>/<tag>/`` (optionally one dataset/split), and the
    folders that look like unfinished sets. Raises ConfigError when nothing matches."""
    import pandas as pd
    import pyarrow.parquet as pq

    root = Path(out_root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder")
    sets: list[CodecSet] = []
    incomplete: list[Path] = []
    for folder in sorted(p for p in root.glob("*/*/*") if p.is_dir()):
        ds, sp = folder.parent.parent.name, folder.parent.name
        if (dataset is not None and ds != dataset) or (split is not None and sp != split):
            continue
        index_path = folder / layout.INDEX
        if not index_path.is_file():
            if (folder / layout.MANIFEST).is_file() or any(folder.glob("*.tar")) or any(folder.glob("*.tar.gz")):
                incomplete.append(folder)
            continue
        try:
            index = json.loads(index_path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{index_path} is not valid JSON: {exc}") from None
        if not isinstance(index, dict) or "codec" not in index or "shards" not in index:
            continue  # some other JSON file that happens to be called index.json
        if (index.get("dataset"), index.get("split"), index.get("tag")) != (ds, sp, folder.name):
            raise ConfigError(f"{index_path} describes {index.get('dataset')}/{index.get('split')}/"
                              f"{index.get('tag')}, not the folder it is in")
        manifest_path = folder / index.get("manifest", layout.MANIFEST)
        if not manifest_path.is_file():
            raise ConfigError(f"{folder} has an index.json but no {manifest_path.name}")
        frame: pd.DataFrame = pq.read_table(manifest_path).to_pandas()
        sets.append(CodecSet(ds, sp, folder.name, folder, index, frame))
    if not sets:
        where = "/".join(x for x in (dataset, split) if x) or "any dataset"
        raise ConfigError(f"no finished codec set (OUT/<dataset>/<split>/<tag>/index.json) for {where} under {root}"
                          + (f"; {len(incomplete)} unfinished" if incomplete else ""))
    return sets, incomplete
