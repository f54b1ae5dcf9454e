import checkpoints as ck
import pytest


@pytest.fixture
def offline_cpu(monkeypatch):
    """Codecs on the CPU, nothing downloaded, no weights folder from the environment."""
    monkeypatch.setenv("MPQ_DEVICE", "cpu")
    monkeypatch.setenv("MPQ_OFFLINE", "1")
    monkeypatch.delenv("MPQ_WEIGHTS_DIR", raising=False)


@pytest.fixture(scope="module")
def photos(request, tmp_path_factory):
    """The module's ``SIZES`` photographs as PNG files in a folder, and their pixels."""
    return ck.photo_folder(tmp_path_factory.mktemp("photos"), request.module.SIZES)


@pytest.fixture(scope="module")
def ckpts(request, tmp_path_factory):
    """The module's checkpoint set (:func:`checkpoints.checkpoint_set`), written by its ``_save``."""
    return ck.checkpoint_set(tmp_path_factory.mktemp("own"), request.module._save)
