"""A split's samples held as columns, so the client's memory does not grow by a Python object per sample.

A source appends rows to a :class:`ListingBuilder` while it scans its folders; the builder turns
every few thousand rows into Arrow arrays, so ImageNet-train (1.28 M files) costs about a hundred
bytes a sample instead of the kilobyte of a ``SampleRef`` with its strings and tuples. The
:class:`Listing` it returns is a ``Sequence[SampleRef]``: indexing materializes one ``SampleRef``,
slicing gives a smaller ``Listing`` (a view; it pickles only its own rows), and a task turns its
shard's slice into ``SampleRef`` objects only when it runs.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from typing import Any, Iterator, Sequence, overload

from ..errors import ConfigError
from .base import SampleRef

_CHUNK = 1 << 14  # rows turned into Arrow arrays at a time while listing
_FIXED = ("key", "source", "label", "stamp")


def _pool():
    """The C allocator for the listing's buffers: Arrow's default (mimalloc) kept about 90 MB of freed
    conversion buffers for ImageNet-train, a third of the client's peak, where malloc hands them back."""
    import pyarrow as pa

    return pa.system_memory_pool()


def _compact(column):
    """Strings that repeat a lot (class names, wnids, fingerprints) dictionary-encoded, in Arrow (no Python objects)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_string(column.type) and len(column) > 64 and pc.count_distinct(column).as_py() * 4 < len(column):
        return pc.dictionary_encode(column, memory_pool=_pool())
    return column


class ListingBuilder:
    """Rows appended while a source scans; ``build()`` sorts by key and makes keys unique.

    ``path_base``: when set, each row's ``path`` (in ``meta``) is ``os.path.join(path_base, source)`` and is
    not stored; ``meta_names`` fixes the order of the other ``meta`` entries (a row gives them by name).
    """

    def __init__(self, meta_names: Sequence[str] = (), *, path_base: str | None = None):
        self.meta_names = tuple(meta_names)
        self.path_base = path_base
        self._rows: dict[str, list[Any]] = {}
        self._chunks: list[Any] = []
        self._reset()

    def _reset(self) -> None:
        self._rows = {name: [] for name in (*_FIXED, *self.meta_names)}

    def __len__(self) -> int:
        return sum(c.num_rows for c in self._chunks) + len(self._rows["key"])

    def add(self, key: str, source: str, label: int | None = None, stamp: str = "", **meta: Any) -> None:
        rows = self._rows
        rows["key"].append(key)
        rows["source"].append(source)
        rows["label"].append(label)
        rows["stamp"].append(stamp)
        for name in self.meta_names:
            rows[name].append(meta.get(name))
        if len(rows["key"]) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows["key"]:
            names = list(self._rows)
            pool = _pool()
            arrays = [pa.array(self._rows[n], pa.int64() if n == "label" else pa.string() if n in _FIXED else None,
                               memory_pool=pool) for n in names]
            self._chunks.append(pa.Table.from_arrays(arrays, names=names))
            self._reset()

    def build(self) -> "Listing":
        """Sort by key; colliding keys get a short hash of their source name (as ``finalize`` does).

        Columns stay in the chunks they were built in and are reordered one at a time (not at all when
        the scan already went in key order); duplicates are found between neighbours. So the client
        holds one copy of the listing and no hash table of its keys.
        """
        import pyarrow as pa

        self._flush()
        if not self._chunks:
            return Listing(None, self.meta_names, self.path_base)
        table = _sorted(pa.concat_tables(self._chunks, promote_options="permissive"))  # chunks are kept, not copied
        self._chunks = []
        if _adjacent_equal(table["key"]):  # rare: collect the colliding keys in Python
            keys = table["key"].to_pylist()
            counts = Counter(keys)
            keys = [f"{k}-{hashlib.sha1(s.encode()).hexdigest()[:8]}" if counts[k] > 1 else k
                    for k, s in zip(keys, table["source"].to_pylist())]
            table = _sorted(table.set_column(0, "key", pa.array(keys, pa.string(), memory_pool=_pool())))
            if _adjacent_equal(table["key"]):  # two sources whose names hash alike: refuse
                raise ConfigError("could not make unique sample keys")
        for i, name in enumerate(table.column_names):
            if name in self.meta_names:
                table = table.set_column(i, name, _compact(table[name]))
        return Listing(table, self.meta_names, self.path_base)


def _sorted(table):
    """The table in key order, reordered one column at a time (not at all when the scan was in key order)."""
    import pyarrow.compute as pc

    key = table["key"]
    pool = _pool()
    if table.num_rows < 2 or not pc.any(pc.less(key[1:], key[:-1], memory_pool=pool)).as_py():
        return table
    order = pc.sort_indices(key, memory_pool=pool)
    for i, name in enumerate(table.column_names):
        table = table.set_column(i, name, pc.take(table[name], order, memory_pool=pool))
    return table


def _adjacent_equal(keys) -> bool:
    """Whether sorted keys repeat (a comparison of neighbours; no hash table of every key)."""
    import pyarrow.compute as pc

    return len(keys) > 1 and bool(pc.any(pc.equal(keys[1:], keys[:-1], memory_pool=_pool())).as_py())


class Listing(Sequence[SampleRef]):
    """Samples as Arrow columns (key, source, label, stamp, meta...); a ``Sequence[SampleRef]``."""

    def __init__(self, table: Any, meta_names: tuple[str, ...] = (), path_base: str | None = None):
        self._table = table
        self.meta_names = meta_names
        self.path_base = path_base

    @classmethod
    def from_refs(cls, refs: Sequence[SampleRef]) -> "Listing":
        """A listing of refs a source built itself (small sources; tests)."""
        names = tuple(dict.fromkeys(n for r in refs for n, _ in r.meta))
        builder = ListingBuilder(names)
        for r in refs:
            builder.add(r.key, r.source, r.label, r.stamp, **dict(r.meta))
        return builder.build()

    def __len__(self) -> int:
        return 0 if self._table is None else self._table.num_rows

    @overload
    def __getitem__(self, i: int) -> SampleRef: ...
    @overload
    def __getitem__(self, i: slice) -> "Listing": ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("a listing slices with step 1 only")
            table = None if self._table is None else self._table.slice(start, max(0, stop - start))
            return Listing(table, self.meta_names, self.path_base)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return self._refs(self._table.slice(i % n, 1))[0]

    def __iter__(self) -> Iterator[SampleRef]:
        for start in range(0, len(self), 4096):
            yield from self._refs(self._table.slice(start, 4096))

    def refs(self) -> tuple[SampleRef, ...]:
        """Every sample as a SampleRef (a shard's worth, on a worker)."""
        return tuple(self)

    def _refs(self, part: Any) -> list[SampleRef]:
        cols = {n: part[n].to_pylist() for n in part.column_names}
        out = []
        for i, (key, source, label, stamp) in enumerate(zip(cols["key"], cols["source"], cols["label"],
                                                              cols["stamp"])):
            meta = tuple((n, cols[n][i]) for n in self.meta_names)
            if self.path_base is not None:
                meta = (("path", os.path.join(self.path_base, source)),) + meta
            out.append(SampleRef(key, source, label, meta, stamp))
        return out

    def column(self, name: str) -> list[Any]:
        """One column as Python values (e.g. every key)."""
        return [] if self._table is None else self._table[name].to_pylist()

    @property
    def nbytes(self) -> int:
        """Bytes the columns hold (a slice reports its parent's buffers)."""
        return 0 if self._table is None else self._table.nbytes

    def __reduce__(self):
        # a slice of a big table would pickle the whole buffers: copy just these rows
        table = None
        if self._table is not None:
            import pyarrow as pa

            table = pa.Table.from_pylist(self._table.to_pylist(), schema=self._table.schema)
        return (Listing, (table, self.meta_names, self.path_base))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Listing) or isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    # unhashable like the list it compares equal to; object declares __hash__ as a method
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Listing({len(self)} samples)"
