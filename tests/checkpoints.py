"""What the tests of own-checkpoint codecs share: random models saved as a researcher saves them, hashes,
published parameter names, and a folder of photographs to transcode."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import fixtures as fx
import numpy as np
import pytest
from PIL import Image

from pipeline.codecs.spec import parse_spec
from pipeline.errors import ConfigError, MissingWeightsError

#: the entropy coder's tables a CompressAI model saves after update()
TABLE_SUFFIXES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_state(model: Any, path: Path, *, scale_layer: Any, scale: float = 1.0, tables: bool = False,
               strip: bool = False, rename: Any = None) -> Path:
    """Save ``model``'s state dict at ``path``: ``scale`` multiplies ``scale_layer``'s weight (the analysis
    transform's last layer: larger latents, more bits); ``tables``: update() first, as a published file;
    ``strip``: the table keys removed; ``rename``: a function over the state dict (older key names)."""
    import torch

    with torch.no_grad():
        scale_layer.weight.mul_(scale)
    if tables:
        model.update(force=True)
    state = model.state_dict()
    if strip:
        state = {k: v for k, v in state.items() if not k.endswith(TABLE_SUFFIXES)}
    if rename is not None:
        state = rename(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def checkpoint_set(root: Path, save: Any) -> dict[str, Path]:
    """What the own-checkpoint tests use, written by ``save(path, seed=, scale=)``: two different files ``a``
    and ``b``, and a folder ``rd/`` of two (``low``, then ``high`` with larger latents) for ``bpp=``."""
    return {"a": save(root / "a.pth"), "b": save(root / "b.pth", seed=1),
            "low": save(root / "rd" / "1-low.pth", seed=2), "high": save(root / "rd" / "2-high.pth", seed=2, scale=8.0)}


def check_spec_refusals(spec: str, ckpts: dict[str, Path], tmp_path: Path) -> None:
    """The refusals every own-checkpoint codec shares (``spec``: the codec name and any other parameters,
    e.g. ``compressai:arch=mbt2018-mean,``): a missing file named with its folder, two files without a
    quality or bpp, a quality beyond the files given."""
    name = spec.split(":", 1)[0]
    missing = tmp_path / "gone" / "mine.pth"
    with pytest.raises(MissingWeightsError, match=re.escape(f"{name}: checkpoint mine.pth does not exist in "
                                                            f"{missing.parent}")):
        parse_spec(f"{spec}checkpoint={missing}")
    with pytest.raises(ConfigError, match=re.escape(f"{name}: 2 checkpoints: give quality=1..2 or bpp=")):
        parse_spec(f"{spec}checkpoint={ckpts['a']}|{ckpts['b']}")
    with pytest.raises(ConfigError, match=f"{name}: quality=3 but only 2"):
        parse_spec(f"{spec}checkpoint={ckpts['a']}|{ckpts['b']},quality=3")


def published_names(state: dict) -> dict:
    """CompressAI >= 1.2.7 names (``matrices.0``) back to the older ones (``_matrix0``) NeuralCompression's
    checkpoints carry."""
    renames = {"matrices": "_matrix", "biases": "_bias", "factors": "_factor"}
    out = {}
    for key, value in state.items():
        module, _, rest = key.partition(".")
        head, _, index = rest.partition(".")
        out[f"{module}.{renames[head]}{index}" if module == "hyper_bottleneck" and head in renames else key] = value
    return out


def photo_folder(root: Path, sizes: dict[str, tuple[str, int, int]]) -> tuple[Path, dict[str, np.ndarray]]:
    """``root/KEY.png`` for each ``KEY: (photo, height, width)``, and the pixels."""
    pixels = {}
    for key, (name, h, w) in sizes.items():
        pixels[key] = fx.photo(name, h, w)
        Image.fromarray(pixels[key]).save(root / f"{key}.png")
    return root, pixels


def check_stored_sample(members: dict[str, bytes], rgb: np.ndarray) -> Any:
    """One learned sample as stored: ``bits`` from the ``.bin``'s bytes, the PNG the decoded stream's pixels
    (as ``mpq decode`` writes them); the stream unpacked, for its header."""
    import json

    from pipeline.codecs import bitstream

    record = json.loads(members["json"])
    assert record["bits"] == 8 * len(members["bin"])
    assert record["bpp"] == record["bits"] / rgb.shape[0] / rgb.shape[1]
    rec = fx.rgb_pixels(members["png"])
    assert rec.shape == rgb.shape and members["png"] == bitstream.png_bytes(rec)
    assert np.array_equal(bitstream.decode_bytes(members["bin"], record=record), rec)
    return bitstream.unpack(members["bin"])


def check_decode_finds_the_checkpoint(members: dict[str, bytes], folder: Path, weights: Path, refusal: str,
                                      monkeypatch: Any) -> None:
    """``mpq decode KEY.bin`` gives the stored PNG through ``KEY.json`` beside it and through
    ``--weights-dir``, and with neither is refused, naming the hash (``refusal``)."""
    import pytest

    from pipeline.cli import main
    from pipeline.codecs import bitstream
    from pipeline.errors import MissingWeightsError

    src = folder / "sample.bin"
    src.write_bytes(members["bin"])
    src.with_suffix(".json").write_bytes(members["json"])
    assert main(["decode", str(src), "-o", str(folder / "a.png")]) == 0
    assert (folder / "a.png").read_bytes() == members["png"]
    src.with_suffix(".json").unlink()
    assert main(["decode", str(src), "-o", str(folder / "b.png"), "--weights-dir", str(weights)]) == 0
    assert (folder / "b.png").read_bytes() == members["png"]
    monkeypatch.setenv("TORCH_HOME", str(folder / "torch"))
    with pytest.raises(MissingWeightsError, match=refusal):
        bitstream.decode_file(src)
    assert main(["decode", str(src), "-o", str(folder / "c.png")]) == 2
