"""What a sample of each dataset looks like once loaded: field names for members and record values.

A sample is the payload decoded into the modality's field (``image``, ``audio``; MUSDB's
``mixture``), attachments under task names (``.cls`` -> ``label``, ``.seg.png`` ->
``segmentation``), and the recorded size of the payload (``bits`` with ``bpp`` or ``kbps``) and
other facts from the sample's ``.json``. MUSDB's stems come back as ``stems`` (the lossless
references, ``{key}.{stem}.flac``) and, when the stems were coded too, ``coded_stems``.
"""
from __future__ import annotations


#: member extension -> sample field
ATTACHMENT_FIELDS = {"cls": "label", "seg.png": "segmentation", "txt": "transcript", "transcript": "transcript"}

#: the decoded payload's field, by modality; per dataset where it differs
PAYLOAD_FIELD = {"image": "image", "audio": "audio"}
DATASET_PAYLOAD_FIELD = {"musdb": "mixture"}

#: values copied from the sample's .json record when present, by modality
RECORD_FIELDS = {
    "image": ("bits", "bpp"),
    "audio": ("bits", "kbps", "sample_rate", "transcript", "num_samples"),
}

#: record values copied to the sample (when no attachment gave them), for every dataset and per dataset
RECORD_EXTRAS = ("label",)
DATASET_RECORD_EXTRAS = {"librispeech": ("speaker_id", "chapter_id"), "musdb": ("track",)}

#: fields that geometric transforms must move together with the image (passed as masks)
MASK_FIELDS = ("segmentation",)


def record_extras(dataset: str) -> tuple[str, ...]:
    return RECORD_EXTRAS + DATASET_RECORD_EXTRAS.get(dataset, ())


def stems(dataset: str) -> tuple[str, ...]:
    """Named signals stored beside the payload (``{key}.{stem}.flac``, coded ``{key}.{stem}.{ext}``)."""
    if dataset == "musdb":
        from ..sources.musdb import STEMS

        return tuple(STEMS)
    return ()


def payload_field(dataset: str, modality: str) -> str:
    return DATASET_PAYLOAD_FIELD.get(dataset, PAYLOAD_FIELD.get(modality, "data"))


def record_fields(modality: str) -> tuple[str, ...]:
    return RECORD_FIELDS.get(modality, ("bits",))
