"""Remote shards through fsspec: an HTTP server on 127.0.0.1, a local cache, each shard fetched once."""
from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("aiohttp")  # fsspec's HTTP filesystem
from torch.utils.data import DataLoader  # noqa: E402

import fixtures as fx  # noqa: E402
from pipeline.errors import SampleError  # noqa: E402
from pipeline.loaders import hf_data_files, load, manifests  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

SPEC = "jpeg:quality=5"


@pytest.fixture(scope="module")
def out(tmp_path_factory, imagefolder_classes) -> Path:
    dest = tmp_path_factory.mktemp("remote")
    assert not fx.transcode("imagefolder", imagefolder_classes, dest, codecs=(SPEC, "none"),
                            samples_per_shard=2).failed
    return dest


@pytest.fixture
def server(out):
    """Serves ``out`` read-only on 127.0.0.1 and records every request path."""
    log: list[tuple[str, str]] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            log.append((self.command, self.path))

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(out)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", log
    finally:
        httpd.shutdown()
        httpd.server_close()


def tar_gets(log):
    return [p for c, p in log if c == "GET" and p.endswith(".tar")]


def test_http_shards_are_fetched_once_into_the_cache(out, server, tmp_path):
    url, log = server
    local = [s["__key__"] for s in load(out, "imagefolder", "all", SPEC)]
    cache = tmp_path / "cache"
    for epoch in range(2):  # two epochs, two workers sharing shards at slice borders
        ds = load(url, "imagefolder", "all", SPEC, cache_dir=cache)
        ds.set_epoch(epoch)
        keys = [k for b in DataLoader(ds, batch_size=2, num_workers=2, collate_fn=lambda b: [s["__key__"] for s in b])
                for k in b]
        assert sorted(keys) == sorted(local) and len(keys) == len(local)
    index = json.loads((out / "imagefolder" / "all" / "jpeg-q5" / "index.json").read_text())
    gets = tar_gets(log)
    assert sorted(gets) == sorted(f"/imagefolder/all/jpeg-q5/{s['name']}" for s in index["shards"])
    cached = sorted(cache.rglob("*.tar"))
    assert len(cached) == len(index["shards"]) and not list(cache.rglob("*.tmp-*"))
    # the samples and the tables read over HTTP are the local ones
    remote = list(load(url, "imagefolder", "all", SPEC, cache_dir=cache))
    for a, b in zip(remote, load(out, "imagefolder", "all", SPEC)):
        assert a["__key__"] == b["__key__"] and torch.equal(a["image"], b["image"]) and a["label"] == b["label"]
    assert manifests(url, "imagefolder", "all", [SPEC]).equals(manifests(out, "imagefolder", "all", [SPEC]))
    assert hf_data_files(url, "imagefolder", "all", SPEC)[0].startswith(url + "/imagefolder/all/jpeg-q5/")


def test_a_changed_remote_shard_is_refused(out, server, tmp_path):
    url, _ = server
    index_path = out / "imagefolder" / "all" / "none" / "index.json"
    index = json.loads(index_path.read_text())
    bad = dict(index, shards=[dict(s, sha256="0" * 64) for s in index["shards"]])
    index_path.write_text(json.dumps(bad))
    try:
        with pytest.raises(SampleError, match="index.json records"):
            list(load(url, "imagefolder", "all", None, cache_dir=tmp_path / "c"))
        assert not list((tmp_path / "c").rglob("*.tar")), "a shard that failed its check must not be cached"
    finally:
        index_path.write_text(json.dumps(index))


def test_file_urls_with_a_cache(out, tmp_path):
    ds = load(f"file://{out}", "imagefolder", "all", SPEC)
    assert ds.storage.local and [s["__key__"] for s in ds] == [s["__key__"] for s in load(out, "imagefolder", "all",
                                                                                           SPEC)]
