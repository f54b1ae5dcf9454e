"""The shard writer: deterministic tar headers, member order, atomic publication, stale temp clean-up."""
from __future__ import annotations

import json
import os
import tarfile

import pytest

import fixtures as fx
from pipeline.store.writer import ShardWriter, dumps, file_digest, publish_bytes, remove_stale_temps, tmp_path, write_json

SAMPLES = [("a-1", [("jpg", b"\xff\xd8payload"), ("cls", b"3"), ("json", b'{"k":1}')]),
           ("b_2", [("png", b"\x89PNG" * 300), ("json", b"{}")])]


def _write(path) -> tuple[int, str]:
    w = ShardWriter(path)
    for key, members in SAMPLES:
        w.add(key, members)
    return w.close()


def test_members_headers_and_digest(tmp_path):
    final = tmp_path / "sets" / "x-000000.tar"
    size, digest = _write(final)
    assert (size, digest) == file_digest(final) and size == final.stat().st_size
    items = fx.read_tar(final)
    assert [i.name for i, _ in items] == [f"{k}.{e}" for k, ms in SAMPLES for e, _ in ms]
    assert [d for _, d in items] == [d for _, ms in SAMPLES for _, d in ms]
    for info, _ in items:
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o444)
        assert info.isfile()
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # no temporary file left


def test_same_samples_give_identical_bytes(tmp_path):
    a, b = tmp_path / "a.tar", tmp_path / "b" / "a.tar"
    _write(a)
    os.utime(tmp_path, (12345, 12345))  # nothing of the environment gets into the tar
    _write(b)
    assert a.read_bytes() == b.read_bytes()


def test_nothing_under_the_final_name_until_closed(tmp_path):
    final = tmp_path / "s.tar"
    w = ShardWriter(final)
    w.add(*SAMPLES[0])
    assert not final.exists() and w.tmp.exists() and w.tmp.name.startswith(".s.tar.tmp-")
    w.abort()
    assert not final.exists() and not w.tmp.exists()


@pytest.mark.parametrize("key", ["a.b", "a/b", "a-1"])
def test_bad_or_repeated_keys(tmp_path, key):
    w = ShardWriter(tmp_path / "s.tar")
    w.add("a-1", [("json", b"{}")])
    with pytest.raises(ValueError, match="bad or repeated key"):
        w.add(key, [("json", b"{}")])
    w.abort()


def test_remove_stale_temps_only_touches_that_shard(tmp_path):
    name = "ds-train-jpeg-q5-000003"
    stale = [tmp_path / f".{name}.tar.tmp-123-abcd", tmp_path / f".{name}_stats.json.tmp-9-ffff",
             tmp_path / f"..{name}.attempt.tmp-77-0bad"]  # a worker killed while writing its attempt marker
    keep = [tmp_path / f"{name}.tar", tmp_path / ".ds-train-jpeg-q5-000004.tar.tmp-1-0000",
            tmp_path / "..ds-train-jpeg-q5-000004.attempt.tmp-1-0000", tmp_path / f".{name}.attempt"]
    for p in stale + keep:
        p.write_bytes(b"x")
    remove_stale_temps(tmp_path, name)
    assert [p.exists() for p in stale] == [False, False, False] and all(p.exists() for p in keep)
    remove_stale_temps(tmp_path / "missing", name)  # no folder: nothing to do


def test_publish_bytes_and_canonical_json(tmp_path):
    final = tmp_path / "d" / "x.json"
    write_json(final, {"b": 1, "a": [1.5, None], "c": "é"})
    assert final.read_bytes() == b'{"a":[1.5,null],"b":1,"c":"\\u00e9"}\n'
    assert json.loads(final.read_text()) == {"a": [1.5, None], "b": 1, "c": "é"}
    publish_bytes(final, b"new")
    assert final.read_bytes() == b"new" and len(list(final.parent.iterdir())) == 1
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})
    with pytest.raises(ValueError):
        dumps({"x": float("inf")})
    assert tmp_path_is_sibling(final)


def tmp_path_is_sibling(final) -> bool:
    t = tmp_path(final)
    return t.parent == final.parent and t.name.startswith(f".{final.name}.tmp-") and t != tmp_path(final)


def test_a_tar_from_the_writer_reads_with_the_standard_library(tmp_path):
    final = tmp_path / "s.tar"
    _write(final)
    with tarfile.open(final) as tf:
        assert tf.extractfile("b_2.png").read() == b"\x89PNG" * 300
