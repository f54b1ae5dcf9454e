"""A small ImageNet-layout sample made from real photographs shipped in scikit-image and scikit-learn.

It exercises what real ImageNet throws at a transcoder: a grayscale JPEG and a PNG saved under a
.JPEG name, next to ordinary colour JPEGs.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ConfigError

#: (wnid, skimage/sklearn image name) pairs; the wnids are real ImageNet classes
_DEMO = {
    "n02123045": ["chelsea", "cat"],             # tabby cat
    "n03773504": ["rocket"],                      # missile
    "n07920052": ["coffee"],                      # espresso
    "n09468604": ["china", "flower", "astronaut"],  # valley (and friends)
    "n04590129": ["camera", "text"],             # grayscale photographs
}


def _photo(name: str) -> np.ndarray:
    try:
        if name in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            return load_sample_image(f"{name}.jpg")
        from skimage import data
    except ImportError:
        raise ConfigError("the demo needs scikit-image and scikit-learn: pip install 'mpq-pipeline[demo]'") from None
    return getattr(data, name)()


def make_demo_imagenet(root: Path, size: int = 256) -> Path:
    """Write ``root/{train,val}/<wnid>/*.JPEG`` (idempotent) and return ``root``."""
    root = Path(root)
    for split, variants in (("train", 2), ("val", 1)):
        for wnid, names in _DEMO.items():
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i, name in enumerate(names):
                img = Image.fromarray(_photo(name))
                img.thumbnail((size, size), Image.Resampling.LANCZOS)
                for v in range(variants):
                    target = folder / f"{wnid}_{split}_{i}{v}.JPEG"
                    if target.exists():
                        continue
                    view = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if v else img
                    buf = io.BytesIO()
                    if name == "astronaut":  # ImageNet has a PNG saved under a .JPEG name
                        view.save(buf, format="PNG")
                    else:
                        view.save(buf, format="JPEG", quality=90)
                    target.write_bytes(buf.getvalue())
    return root
