"""A cache that cannot go stale: reruns redo exactly the shards whose sources changed (size and time from
the listing, content with --verify-sources), older sets are adopted, and ``mpq verify`` finds damage."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import audio_fixtures as af
import fixtures as fx
from pipeline.cli import main

IMAGE_CODECS = ("jpeg:quality=50", "none")


def shard_files(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every shard under ``out``: relative name -> (bytes, mtime_ns)."""
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*.tar"))}


def records(out: Path) -> dict[tuple[str, str], tuple[str, dict]]:
    """(shard file, sample key) -> (its shard's relative name, the sample's .json record), read from the tars."""
    found = {}
    for tar in sorted(out.rglob("*.tar")):
        for key, members in fx.group_members(fx.read_tar(tar)).items():
            found[(tar.name, key)] = (str(tar.relative_to(out)), dict(members))
    return found


def holding(out: Path, key: str) -> set[str]:
    """The shards (relative names) that hold sample ``key``."""
    return {rel for (_, k), (rel, _) in records(out).items() if k == key}


def assert_only_rewritten(before: dict, after: dict, rewritten: set[str]) -> None:
    assert list(before) == list(after)
    for name in before:
        if name in rewritten:
            assert after[name][1] != before[name][1], f"{name} was not rewritten"
        else:
            assert after[name] == before[name], f"{name} changed (bytes or mtime)"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def folder(tmp_path) -> fx.Built:
    return fx.build_imagefolder(tmp_path / "src", classes=True)


def test_replaced_image_redoes_only_its_shard(folder, tmp_path):
    out = tmp_path / "out"
    first = fx.transcode("imagefolder", folder, out, codecs=IMAGE_CODECS)
    assert first.shards_written == 8 and first.shards_changed == 0
    before = shard_files(out)
    new = fx.jpeg_bytes(fx.photo("coffee", 96, 128))
    (folder.root / "cats" / "chelsea.jpg").write_bytes(new)  # another image under the same name
    again = fx.transcode("imagefolder", folder, out, codecs=IMAGE_CODECS)
    changed = holding(out, "cats_chelsea")
    assert len(changed) == 2  # one shard per setting
    assert (again.shards_written, again.shards_changed, again.shards_cached) == (2, 2, 6)
    assert_only_rewritten(before, shard_files(out), changed)
    for (_, key), (_, members) in records(out).items():
        if key == "cats_chelsea":
            assert json.loads(members["json"])["source_sha256"] == sha(new)
    manifest = pq.read_table(out / "imagefolder" / "all" / "none" / "manifest.parquet").to_pylist()
    assert {r["key"]: r["source_sha256"] for r in manifest}["cats_chelsea"] == sha(new)
    third = fx.transcode("imagefolder", folder, out, codecs=IMAGE_CODECS)
    assert (third.shards_written, third.shards_cached) == (0, 8)


def test_changed_ade20k_annotation_redoes_only_its_shard(tmp_path):
    built = fx.build_ade20k(tmp_path / "src")["train"]
    out = tmp_path / "out"
    fx.transcode("ade20k", built, out, split="train", codecs=("jpeg:quality=50",), samples_per_shard=1)
    before = shard_files(out)
    ann = built.root / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000002.png"
    new = fx.png_bytes((fx.np.arange(96 * 128).reshape(96, 128) % 7).astype(fx.np.uint8))
    assert new != ann.read_bytes()
    ann.write_bytes(new)
    again = fx.transcode("ade20k", built, out, split="train", codecs=("jpeg:quality=50",), samples_per_shard=1)
    assert (again.shards_written, again.shards_changed, again.shards_cached) == (1, 1, 2)
    changed = holding(out, "ADE_train_00000002")
    assert len(changed) == 1
    assert_only_rewritten(before, shard_files(out), changed)
    (members,) = [m for (_, k), (_, m) in records(out).items() if k == "ADE_train_00000002"]
    assert members["seg.png"] == new


def test_changed_transcript_line_redoes_only_its_shard(tmp_path):
    libri = af.build_librispeech(tmp_path / "src")
    out = tmp_path / "out"
    run = dict(split="dev-clean", codecs=("none",), samples_per_shard=1)
    built = fx.Built(libri.root, {})
    fx.transcode("librispeech", built, out, **run)
    before = shard_files(out)
    trans = libri.root / "LibriSpeech" / "dev-clean" / "84" / "121123" / "84-121123.trans.txt"
    text = trans.read_text()
    old_line = next(line for line in text.splitlines() if line.startswith("84-121123-0001 "))
    trans.write_text(text.replace(old_line, "84-121123-0001 A CORRECTED TRANSCRIPT"))
    again = fx.transcode("librispeech", built, out, **run)
    # the other utterance of the same chapter (same .trans.txt file) keeps its shard
    assert (again.shards_written, again.shards_changed) == (1, 1)
    changed = holding(out, "84-121123-0001")
    assert len(changed) == 1
    assert_only_rewritten(before, shard_files(out), changed)
    (members,) = [m for (_, k), (_, m) in records(out).items() if k == "84-121123-0001"]
    assert members["txt"] == b"A CORRECTED TRANSCRIPT"
    assert json.loads(members["json"])["transcript"] == "A CORRECTED TRANSCRIPT"


def _same_size_edit(path: Path) -> bytes:
    """Change bytes in the middle of a file, keeping its size and modification time."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid: mid + 8] = bytes((b ^ 0x55) for b in data[mid: mid + 8])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    return bytes(data)


def test_verify_sources_catches_a_file_restored_to_its_size_and_mtime(folder, tmp_path):
    out = tmp_path / "out"
    fx.transcode("imagefolder", folder, out, codecs=IMAGE_CODECS)
    before = shard_files(out)
    new = _same_size_edit(folder.root / "things" / "rocket.JPG")
    blind = fx.transcode("imagefolder", folder, out, codecs=IMAGE_CODECS)
    assert blind.shards_written == 0  # size and time alone cannot see it
    checked = fx.transcode("imagefolder", folder, out, codecs=IMAGE_CODECS, verify_sources=True)
    changed = holding(out, "things_rocket")
    assert (checked.shards_written, checked.shards_changed, checked.shards_cached) == (2, 2, 6)
    assert_only_rewritten(before, shard_files(out), changed)
    for (_, key), (_, members) in records(out).items():
        if key == "things_rocket":
            assert json.loads(members["json"])["source_sha256"] == sha(new)
    assert fx.transcode("imagefolder", folder, out, codecs=IMAGE_CODECS, verify_sources=True).shards_written == 0


def test_verify_sources_compares_verbatim_members(tmp_path):
    """An annotation changed in place (same size and time) is caught through the shard's seg.png member."""
    built = fx.build_ade20k(tmp_path / "src")["train"]
    out = tmp_path / "out"
    fx.transcode("ade20k", built, out, split="train", codecs=("jpeg:quality=50",), samples_per_shard=1)
    new = _same_size_edit(built.root / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000001.png")
    again = fx.transcode("ade20k", built, out, split="train", codecs=("jpeg:quality=50",), samples_per_shard=1,
                         verify_sources=True)
    assert (again.shards_written, again.shards_changed) == (1, 1)
    (members,) = [m for (_, k), (_, m) in records(out).items() if k == "ADE_train_00000001"]
    assert members["seg.png"] == new


# --------------------------------------------------------------------------- sets written before stamps


def _strip_sources_key(out: Path) -> int:
    """Make every stats file look like one written before this change (no "sources" entry)."""
    n = 0
    for stats in out.rglob("*_stats.json"):
        data = json.loads(stats.read_text())
        del data["sources"]
        st = stats.stat()
        stats.write_text(json.dumps(data))
        os.utime(stats, ns=(st.st_atime_ns, st.st_mtime_ns))
        n += 1
    return n


def test_older_set_is_adopted_and_a_newer_source_is_redone(folder, tmp_path):
    out = tmp_path / "out"
    fx.transcode("imagefolder", folder, out, codecs=IMAGE_CODECS)
    before = shard_files(out)
    assert _strip_sources_key(out) == 8
    adopted = fx.transcode("imagefolder", folder, out, codecs=IMAGE_CODECS)
    assert (adopted.shards_written, adopted.shards_adopted, adopted.shards_cached) == (0, 8, 8)
    assert shard_files(out) == before
    assert all("sources" in json.loads(p.read_text()) for p in out.rglob("*_stats.json"))
    # an older set whose source changed after it was written: that shard is redone, not adopted
    _strip_sources_key(out)
    path = folder.root / "cats" / "cat.png"
    newest = max(p.stat().st_mtime_ns for p in out.rglob("*_stats.json"))
    os.utime(path, ns=(newest + 10**9, newest + 10**9))
    again = fx.transcode("imagefolder", folder, out, codecs=IMAGE_CODECS)
    assert (again.shards_written, again.shards_changed, again.shards_adopted) == (2, 2, 6)
    assert_only_rewritten(before, shard_files(out), holding(out, "cats_cat"))


# --------------------------------------------------------------------------- mpq verify


def test_mpq_verify_clean_truncated_and_changed_source(folder, tmp_path, capsys):
    out = tmp_path / "out"
    fx.transcode("imagefolder", folder, out, codecs=IMAGE_CODECS)
    assert main(["verify", str(out), "--sources", str(folder.root)]) == 0
    # 7 samples per set, one an error row (no source_sha256): 6 recorded hashes per set, each checked
    assert "clean: 2 sets, 8 shards, 12 sources rehashed" in capsys.readouterr().out
    shard = sorted((out / "imagefolder" / "all" / "none").glob("*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[:-1024])
    (folder.root / "things" / "coins.jpeg").write_bytes(fx.jpeg_bytes(fx.photo("camera", 96, 112)))
    assert main(["verify", str(out), "--sources", str(folder.root)]) == 1
    text = capsys.readouterr()
    lines = text.out.splitlines()
    assert any(shard.name in line and "damaged" in line for line in lines)
    changed = [line for line in lines if "source changed" in line]
    assert len(changed) == 2 and all("things_coins" in line for line in changed)  # once per setting
    assert "problems in 2 sets" in text.err
    # without --sources only the damaged shard is reported; narrowed to one dataset and split
    assert main(["verify", str(out), "--dataset", "imagefolder", "--split", "all"]) == 1
    assert [line for line in capsys.readouterr().out.splitlines() if line.strip()] == \
        [line for line in lines if "damaged" in line]


def test_mpq_verify_reports_manifest_and_index_disagreeing(folder, tmp_path, capsys):
    out = tmp_path / "out"
    fx.transcode("imagefolder", folder, out, codecs=("none",))
    index_file = out / "imagefolder" / "all" / "none" / "index.json"
    index = json.loads(index_file.read_text())
    index["shards"][0]["samples"] += 1
    index_file.write_text(json.dumps(index))
    assert main(["verify", str(out)]) == 1
    assert "manifest has" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "nothing")]) == 1


def test_verify_output_on_object_storage(folder):
    """The same checks through fsspec (memory://): clean, then a shard overwritten with other bytes."""
    import fsspec

    from pipeline.store.verify import verify_output

    out = "memory://mpq-verify-test/out"
    fx.transcode("imagefolder", folder, out, codecs=("none",))
    report = verify_output(out, sources=str(folder.root))
    assert report.clean and (report.sets, report.shards, report.sources_checked) == (1, 4, 6)
    fs = fsspec.filesystem("memory")
    (shard,) = [p for p in fs.glob("/mpq-verify-test/out/imagefolder/all/none/*.tar") if p.endswith("000002.tar")]
    fs.pipe_file(shard, b"not the shard")
    (problem,) = verify_output(out).problems
    assert problem.where.endswith("000002.tar") and "damaged" in problem.what


def test_cli_summary_counts_shards_redone_for_changed_sources(folder, tmp_path, capsys):
    args = ["transcode", "imagefolder", str(folder.root), "--codec", "none", "--out", str(tmp_path / "out"),
            "--workers", "0", "--samples-per-shard", "2", "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    _same_size_edit(folder.root / "cats" / "cat.png")
    assert main(args) == 0
    assert "shards written 0, already complete 4;" in capsys.readouterr().out
    assert main(args + ["--verify-sources"]) == 0
    assert "shards written 1 (1 because their sources changed), already complete 3;" in capsys.readouterr().out
