"""ImageNet source: both on-disk layouts, standard ILSVRC-2012 labels, Kaggle csv labels, end-to-end shards."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import fixtures as fx
from pipeline.errors import ConfigError, SampleError
from pipeline.sources import make_source

LAYOUTS = ["imagenet_folders", "imagenet_kaggle"]


@pytest.fixture(params=LAYOUTS)
def imagenet(request) -> dict[str, fx.Built]:
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("split", ["train", "val"])
def test_list_names_and_labels(imagenet, split):
    built = imagenet[split]
    refs = make_source("imagenet", built.root, split).list()
    assert [r.key for r in refs] == sorted(r.key for r in refs)
    assert {r.source: r.label for r in refs} == {e.source: e.label for e in built.samples.values()}
    for r in refs:
        assert "." not in r.key and "/" not in r.key


def test_labels_are_standard_wnid_indices_in_both_layouts(imagenet_folders, imagenet_kaggle):
    """label = index of the wnid in timm's ILSVRC-2012 list, whatever the layout and the subset of classes."""
    standard = fx.standard_wnids()
    want = {w: standard.index(w) for w in fx.WNIDS}
    assert sorted(want.values()) == [0, 1, 217]  # tench, goldfish, English springer
    for built in (imagenet_folders, imagenet_kaggle):
        for split in ("train", "val"):
            src = make_source("imagenet", built[split].root, split)
            assert src.wnids() == standard
            refs = src.list()
            assert src.listing_notes() == ()  # Kaggle's mapping file is the standard list: nothing to say
            for ref in refs:
                if ref.get("wnid") is not None:
                    assert ref.label == want[ref.get("wnid")]


def _image(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), (200, 30, 40)).save(path, format="JPEG")


def _subset_with_stray_folders(root: Path) -> Path:
    """The issue's tree: three classes of 1,000, a notebook checkpoint folder with one image, an empty lost+found."""
    for wnid in ("n01440764", "n02105855", "n04590129"):
        _image(root / "train" / wnid / f"{wnid}_1.JPEG")
    _image(root / "train" / ".ipynb_checkpoints" / "n01440764_1-checkpoint.JPEG")
    (root / "train" / "lost+found").mkdir()
    return root


def test_subset_and_stray_folders_get_standard_labels(tmp_path):
    src = make_source("imagenet", _subset_with_stray_folders(tmp_path), "train")
    refs = src.list()
    assert [(r.get("wnid"), r.label) for r in refs] == [("n01440764", 0), ("n02105855", 230), ("n04590129", 905)]
    standard = fx.standard_wnids()
    assert [standard[r.label] for r in refs] == [r.get("wnid") for r in refs]
    notes = src.listing_notes()
    assert len(notes) == 1 and "skipped 2 folders that are not wnids" in notes[0]
    assert ".ipynb_checkpoints (1 images)" in notes[0] and "lost+found (0 images)" in notes[0]
    labels = src.describe()["labels"]
    assert labels["skipped_folders"] == {".ipynb_checkpoints": 1, "lost+found": 0}
    assert labels["classes"] == 1000 and labels["list"].startswith("timm ")


def test_subset_transcoded_through_the_cli_says_what_it_skipped(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.store.index import LocalRoot, read_index

    root = _subset_with_stray_folders(tmp_path / "src")
    res = CliRunner().invoke(cli, ["transcode", "imagenet", str(root), "--split", "train", "--codec", "none",
                                   "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "listed 3 samples" in res.output and "warning: skipped 2 folders that are not wnids" in res.output
    index = read_index(LocalRoot(tmp_path / "out"), "imagenet", "train", "none")
    assert index.counts["ok"] == 3 and index.label_space("label") == (1000, "ILSVRC-2012")
    assert index.source["labels"]["skipped_folders"] == {".ipynb_checkpoints": 1, "lost+found": 0}
    import pyarrow.parquet as pq

    manifest = pq.read_table(tmp_path / "out" / "imagenet" / "train" / "none" / "manifest.parquet").to_pylist()
    rows = {r["wnid"]: r["label"] for r in manifest}
    assert rows == {"n01440764": 0, "n02105855": 230, "n04590129": 905}


def test_a_mapping_file_in_another_order_is_reported_not_obeyed(tmp_path):
    root = _subset_with_stray_folders(tmp_path)
    standard = fx.standard_wnids()
    shuffled = [standard[1], standard[0], *standard[2:]]  # lines 1 and 2 swapped
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} name\n" for w in shuffled))
    src = make_source("imagenet", root, "train")
    assert [r.label for r in src.list()] == [0, 230, 905]
    wrong = [n for n in src.listing_notes() if "LOC_synset_mapping.txt" in n]
    assert len(wrong) == 1
    assert f"line 1: {standard[1]}, the standard list has {standard[0]}" in wrong[0]
    assert f"line 2: {standard[0]}, the standard list has {standard[1]}" in wrong[0]
    src.list()  # listed again (the run lists once to plan): still said
    assert [n for n in src.listing_notes() if "LOC_synset_mapping.txt" in n] == wrong


def test_without_timm_only_a_whole_list_is_trusted(tmp_path, monkeypatch):
    """A plain install (no timm): the Kaggle mapping file or all 1,000 folders give the list; a subset stops."""
    from pipeline.sources import synsets

    monkeypatch.setattr(synsets, "timm_list", lambda: None)
    root = _subset_with_stray_folders(tmp_path)
    with pytest.raises(ConfigError, match="3 of the 1000 classes.*pip install timm"):
        make_source("imagenet", root, "train").list()
    standard = fx.standard_wnids()
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} name\n" for w in standard))
    src = make_source("imagenet", root, "train")
    assert [r.label for r in src.list()] == [0, 230, 905]
    assert src.describe()["labels"]["list"].startswith("LOC_synset_mapping.txt")


def test_read_gives_file_bytes_and_ascii_label(imagenet_kaggle):
    built = imagenet_kaggle["val"]
    src = make_source("imagenet", built.root, "val")
    for ref in src.list():
        exp = built.samples[ref.source]
        if exp.error == "missing label":
            with pytest.raises(SampleError, match="missing label"):
                src.read(ref)
            continue
        raw = src.read(ref)
        assert raw.data == exp.data
        assert raw.attachments == {"cls": str(exp.label).encode("ascii")}
        assert raw.fields["wnid"] == exp.fields["wnid"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_transcode_end_to_end(imagenet, split, tmp_path):
    built = imagenet[split]
    result = fx.transcode("imagenet", built, tmp_path, split=split)
    records = fx.verify_run(result, built)
    assert set(records) == {"none", "jpeg:quality=50,subsampling=420"}


def test_wrong_root_unknown_split_and_empty_split(tmp_path, imagenet_folders):
    with pytest.raises(ConfigError, match="not a folder"):
        make_source("imagenet", tmp_path / "missing", "train").list()
    with pytest.raises(ConfigError, match="no train/ folder"):
        make_source("imagenet", tmp_path, "train").list()
    with pytest.raises(ConfigError, match="unknown split"):
        make_source("imagenet", imagenet_folders["train"].root, "test")
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images"):
        make_source("imagenet", tmp_path, "train").list()


def test_kaggle_val_without_csv_labels_nothing(tmp_path, imagenet_kaggle):
    """Without LOC_val_solution.csv the flat val images have no label: every one becomes an error row."""
    root = tmp_path / "k"
    shutil.copytree(imagenet_kaggle["val"].root, root)
    (root / "LOC_val_solution.csv").unlink()
    src = make_source("imagenet", root, "val")
    refs = src.list()
    assert len(refs) == len(imagenet_kaggle["val"].samples)
    for ref in refs:
        with pytest.raises(SampleError, match="missing label"):
            src.read(ref)


def test_kaggle_csv_with_bom_or_wrong_columns(tmp_path, imagenet_kaggle):
    root = tmp_path / "k"
    shutil.copytree(imagenet_kaggle["val"].root, root)
    csv_file = root / "LOC_val_solution.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + csv_file.read_bytes())  # saved by a spreadsheet program
    want = {e.source: e.label for e in imagenet_kaggle["val"].samples.values()}
    assert {r.source: r.label for r in make_source("imagenet", root, "val").list()} == want
    csv_file.write_text("id,label\nILSVRC2012_val_00000001,n01440764\n")
    with pytest.raises(ConfigError, match="ImageId,PredictionString"):
        make_source("imagenet", root, "val").list()


def _as_written_before(set_folder: Path) -> None:
    """Make a set look as this version's predecessor wrote it: labels = position in the sorted folders present,
    no ``source.labels`` in its index (the shards are not touched: verify reads the manifest and index)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(set_folder / "manifest.parquet")
    wnids = table.column("wnid").to_pylist()
    old = {w: i for i, w in enumerate(sorted({w for w in wnids if w}))}
    labels = pa.array([old.get(w) if w else None for w in wnids], type=pa.int64())
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", labels),
                   set_folder / "manifest.parquet")
    index = json.loads((set_folder / "index.json").read_text())
    del index["source"]["labels"]
    (set_folder / "index.json").write_text(json.dumps(index))


def test_verify_names_a_set_written_with_the_old_labels(tmp_path):
    from pipeline.cli import main

    root = _subset_with_stray_folders(tmp_path / "src")
    out = tmp_path / "out"
    argv = ["transcode", "imagenet", str(root), "--split", "train", "--codec", "none", "--out", str(out),
            "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    assert main(["verify", str(out)]) == 0
    _as_written_before(out / "imagenet" / "train" / "none")
    from pipeline.store.verify import verify_output

    (problem,) = verify_output(str(out)).problems
    assert "not the standard ILSVRC-2012 indices (2 of 3 samples differ" in problem.what
    assert "n02105855_1: n02105855 has label 1, standard 230" in problem.what
    assert "rerunning mpq transcode imagenet ROOT --split train --codec none" in problem.what
    assert main(["verify", str(out)]) == 1
