"""A test-only learned codec for deployment tests: CompressAI's ``bmshj2018-factorized`` architecture
whose checkpoint has a file name (and URL) of our own, so tests can place random weights for it.

Workers import this module by name (``ShardTask.modules``), so it must be on their ``sys.path``.
The file name carries no hash suffix, so the random checkpoint is not refused by the zoo's hash check.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from pipeline.codecs import register
from pipeline.codecs.compressai_zoo import BMSHJ2018Factorized
from pipeline.codecs.spec import CodecSpec

NAME = "test-zoo"
ARCH = "bmshj2018-factorized"
CHECKPOINT = "mpq-test-factorized-1.pth.tar"
URL = "https://models.invalid/mpq-test/" + CHECKPOINT


@register
class TestZoo(BMSHJ2018Factorized):
    name = NAME
    needs_gpu = False  # routed to any worker
    summary = "test only: bmshj2018-factorized with a test checkpoint"

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import compressai  # noqa: F401
        except ImportError as exc:
            return str(exc)
        return None

    @classmethod
    def checkpoint_url(cls, spec: CodecSpec) -> str:
        return URL

    def _load(self, path: Path) -> Any:
        from compressai.zoo.image import model_architectures
        from compressai.zoo.pretrained import load_pretrained

        from pipeline.codecs import weights

        model = model_architectures[ARCH].from_state_dict(load_pretrained(weights.load_state_dict(path)))
        model.update(force=False)
        model.eval().requires_grad_(False)
        return model.to(self.device)


def save_checkpoint(folder: Path) -> Path:
    """Random (seeded) weights for quality 1, under the name the codec looks for."""
    import torch
    from compressai.zoo.image import cfgs, model_architectures

    torch.manual_seed(0)
    model = model_architectures[ARCH](*cfgs[ARCH][1])
    model.update(force=True)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / CHECKPOINT)
    return folder / CHECKPOINT


def registered() -> contextlib.AbstractContextManager[Any]:
    """This module imported (the codec registered) for the duration; unregistered afterwards."""
    import fixtures

    return fixtures.registered_codecs(__name__, [NAME])
