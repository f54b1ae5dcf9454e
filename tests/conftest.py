"""Shared fixtures: small datasets in each source's native layout, built once per session.

Hugging Face is forced offline (and into a private cache) before anything imports ``datasets``,
so no test can reach the network or hang on it.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
if "HF_HOME" not in os.environ:  # keep the user's cache untouched; workers inherit this
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="mpq-test-hf-")
    atexit.register(shutil.rmtree, os.environ["HF_HOME"], True)

sys.path.insert(0, str(Path(__file__).parent))  # tests/fixtures.py, importable from sub-folders

import fixtures as fx  # noqa: E402


@pytest.fixture(scope="session")
def imagenet_folders(tmp_path_factory) -> dict[str, fx.Built]:
    """ImageNet in the PyTorch-example layout: root/{train,val}/<wnid>/*.JPEG."""
    return fx.build_imagenet(tmp_path_factory.mktemp("imagenet-folders"), "folders")


@pytest.fixture(scope="session")
def imagenet_kaggle(tmp_path_factory) -> dict[str, fx.Built]:
    """ImageNet in the Kaggle layout: ILSVRC/Data/CLS-LOC, LOC_val_solution.csv, LOC_synset_mapping.txt."""
    return fx.build_imagenet(tmp_path_factory.mktemp("imagenet-kaggle"), "kaggle")


@pytest.fixture(scope="session")
def ade20k(tmp_path_factory) -> dict[str, fx.Built]:
    return fx.build_ade20k(tmp_path_factory.mktemp("ade20k"))


@pytest.fixture(scope="session")
def coco(tmp_path_factory) -> dict[str, fx.Built]:
    """COCO 2017 one folder below the root: coco/{val2017,train2017}/ and coco/annotations/instances_*.json."""
    return fx.build_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="session")
def imagefolder_classes(tmp_path_factory) -> fx.Built:
    return fx.build_imagefolder(tmp_path_factory.mktemp("imagefolder-classes"), classes=True)


@pytest.fixture(scope="session")
def imagefolder_flat(tmp_path_factory) -> fx.Built:
    return fx.build_imagefolder(tmp_path_factory.mktemp("imagefolder-flat"), classes=False)


@pytest.fixture(scope="session")
def hf_data(tmp_path_factory) -> dict[str, fx.Built]:
    """The same rows as a save_to_disk folder ("disk") and as two parquet files ("parquet")."""
    pytest.importorskip("datasets")
    return fx.build_hf(tmp_path_factory.mktemp("hf"))
