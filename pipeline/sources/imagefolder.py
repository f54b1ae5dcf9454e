"""Any folder of images; with one subfolder per class (and no images at the top) the subfolder is the label."""
from __future__ import annotations

from .base import IMAGE_EXTENSIONS
from .folder import FolderSource
from . import register


@register
class ImageFolder(FolderSource):
    name = "imagefolder"
    extensions = IMAGE_EXTENSIONS
    what = "images"
    summary = "any folder of images, optionally one subfolder per class (label = sorted class index)"
