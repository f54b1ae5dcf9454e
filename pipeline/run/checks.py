"""Checks of a run before any work: its deep metrics fit the dataset, no set folder holds another
setting, and every set folder can be written. The CLI runs them before it starts a cluster."""
from __future__ import annotations

import json

from ..errors import ConfigError
from ..sources.base import Source
from ..store import layout
from ..store.storage import open_store
from .config import TranscodeConfig


def check_deep_metrics(config: TranscodeConfig, modality: str) -> None:
    """Each deep metric fits the dataset, and its backbone is present (or downloaded now): before any work."""
    from ..metrics.deep import get_metric

    for name in config.deep_metrics:
        metric = get_metric(name)
        if metric.modality != modality:
            raise ConfigError(f"{name} is an {metric.modality} metric; {config.dataset} is an {modality} dataset")
        metric.check(config.weights_dir, config.offline)


def check_conflicts(config: TranscodeConfig, source: Source) -> None:
    """Refuse to mix two settings in one folder (a tag whose index records another spec)."""
    store = open_store(config.out)
    for spec in config.codecs:
        folder = store.set_folder(config.dataset, source.split, spec.tag)
        index = store.child(folder, layout.INDEX)
        if store.is_file(index):
            try:
                recorded = json.loads(store.read_bytes(index)).get("codec")
            except ValueError:
                continue
            if recorded != spec.canonical:
                raise ConfigError(f"{folder} holds {recorded}, not {spec.canonical}")


def check_output(config: TranscodeConfig, source: Source) -> None:
    """Each set's folder can be written (a probe written and deleted); raises OutputError, one line."""
    store = open_store(config.out)
    for spec in config.codecs:
        store.check_writable(store.set_folder(config.dataset, source.split, spec.tag))
