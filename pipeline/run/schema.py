"""The sample schema of a set, assembled when it is written from what each stage declares.

The source declares its attachments and record values (:meth:`Source.fields`) and the signals
coded beside the payload (:meth:`Source.tracks`); the modality declares the payload field and
its measures (``schema``); the codec its payload extension and whether a decoded ``.png`` is
stored. Nothing here knows a dataset by name.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..codecs import get_codec
from ..codecs.spec import CodecSpec
from ..modalities import get_modality
from ..sources.base import Source
from ..store.index import Field


def sample_schema(source: Source, spec: CodecSpec, options: Mapping[str, Any]) -> tuple[Field, ...]:
    """The fields each sample of ``spec``'s set carries; ``options`` are the run's task options."""
    name = source.payload_name or source.modality
    modality = get_modality(source.modality)
    return (*modality.schema(get_codec(spec.name), name, options, source.tracks(), spec=spec), *source.fields())
