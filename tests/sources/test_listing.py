"""The columnar listing: SampleRefs as Arrow columns, sorted and unique, sliced and pickled compactly,
with each sample's stamp taken from the files' stat (size and mtime) and its attachments'."""
from __future__ import annotations

import os
import pickle

import audio_fixtures as af
import fixtures as fx
from pipeline.sources import make_source
from pipeline.sources.base import SampleRef, finalize, newest_mtime_ns
from pipeline.sources.listing import Listing, ListingBuilder


def _builder(n: int) -> ListingBuilder:
    b = ListingBuilder(("wnid", "n"), path_base="/data")
    for i in range(n):
        b.add(f"k{(i * 7919) % n:05d}", f"cls{i % 3}/f{i}.jpg", i % 3, f"{i}:{10 * i}", wnid=f"w{i % 3}", n=i)
    return b


def test_listing_is_a_sorted_sequence_of_sample_refs_like_finalize():
    listing = _builder(500).build()
    refs = finalize([SampleRef(r.key, r.source, r.label, r.meta, r.stamp) for r in reversed(list(listing))])
    assert [r.key for r in listing] == sorted(r.key for r in listing)
    assert list(listing) == refs and listing == refs
    ref = listing[3]
    assert ref.get("path") == os.path.join("/data", ref.source) and ref.get("wnid") == f"w{ref.label}"
    assert listing[-1] == refs[-1] and list(listing[100:110]) == refs[100:110]


def test_colliding_keys_get_the_same_suffix_as_finalize():
    b = ListingBuilder()
    rows = [("a_b", "a/b.jpg"), ("a_b", "a_b.jpg"), ("c", "c.jpg")]
    for key, source in rows:
        b.add(key, source)
    want = finalize([SampleRef(k, s) for k, s in rows])
    assert [(r.key, r.source) for r in b.build()] == [(r.key, r.source) for r in want]


def test_a_slice_pickles_only_its_rows():
    listing = _builder(20000).build()
    part = listing[1000:1010]
    data = pickle.dumps(part)
    assert len(data) < len(pickle.dumps(listing)) / 100
    assert list(pickle.loads(data)) == list(part)
    assert Listing.from_refs(list(part)) == part


def test_stamps_come_from_each_files_stat(tmp_path):
    built = fx.build_imagefolder(tmp_path / "folder", classes=True)
    for ref in make_source("imagefolder", built.root, None).list():
        st = os.stat(ref.get("path"))
        assert ref.stamp == f"{st.st_size}:{st.st_mtime_ns}"
        assert newest_mtime_ns(ref.stamp) == st.st_mtime_ns


def test_stamps_cover_attachments(tmp_path):
    ade = fx.build_ade20k(tmp_path / "ade")["val"]
    for ref in make_source("ade20k", ade.root, "val").list():
        ann = ref.get("annotation")
        img = os.stat(ref.get("path"))
        tail = f"{os.stat(ann).st_size}:{os.stat(ann).st_mtime_ns}" if os.path.exists(ann) else "annotation=-"
        assert ref.stamp == f"{img.st_size}:{img.st_mtime_ns};{tail}"
    libri = af.build_librispeech(tmp_path / "libri")
    stamps = {r.key: r.stamp for r in make_source("librispeech", str(libri.root), "dev-clean").list()}
    assert len(set(stamps.values())) == len(stamps)
    assert all(s.endswith("text=-") == (k in libri.failing) for k, s in stamps.items())
    hq = af.build_musdb_hq(tmp_path / "musdb")
    for ref in make_source("musdb", str(hq.root), "test").list():
        parts = ref.stamp.split(";")
        assert len(parts) == 5  # mixture and four stems
        assert parts[0] == "{0.st_size}:{0.st_mtime_ns}".format(os.stat(os.path.join(ref.get("path"), "mixture.wav")))
