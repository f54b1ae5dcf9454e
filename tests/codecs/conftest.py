import pytest


@pytest.fixture
def offline_cpu(monkeypatch):
    """Codecs on the CPU, nothing downloaded, no weights folder from the environment."""
    monkeypatch.setenv("MPQ_DEVICE", "cpu")
    monkeypatch.setenv("MPQ_OFFLINE", "1")
    monkeypatch.delenv("MPQ_WEIGHTS_DIR", raising=False)
