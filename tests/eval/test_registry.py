"""Registries (single source of names, duplicates raise), model specs and the run config."""
from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.eval import EvalConfig, ModelSpec, model_kinds, task_names
from pipeline.eval.models import MODELS, get_model_kind
from pipeline.eval.registry import Registry
from pipeline.eval.tasks import TASKS, get_task


def test_names():
    assert task_names() == ["asr", "classify", "segment", "separate", "similarity"]
    assert model_kinds() == ["cdpam", "dists", "dists-full", "hf", "htdemucs", "lpips", "pocketsphinx", "timm", "torchvision",
                             "umxhq", "umxl"]


def test_duplicate_names_raise():
    reg: Registry = Registry("thing", ())

    class A:
        name = "a"

    class B:
        name = "a"

    reg.register(A)
    reg.register(A)  # the same class again is harmless (a module imported twice)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(B)
    with pytest.raises(ValueError):
        TASKS.register(type("Classify2", (), {"name": "classify"}))
    with pytest.raises(ValueError):
        MODELS.register(type("TV2", (), {"name": "torchvision"}))


@pytest.mark.parametrize("task", task_names())
def test_every_task_declares_itself(task):
    cls = get_task(task)
    if task == "similarity":  # its column and field come from the metric it is bound to
        cls = cls.bind(EvalConfig.create("OUT", "d", "s", task, "lpips:alex"))
    assert cls.name == task and cls.requires and cls.primary in cls.aggregate([])
    names = [n for n, _ in cls.columns()]
    assert len(names) == len(set(names)) and not {"key", "status", "error"} & set(names)
    assert cls.definitions
    # some model kind can do every task
    assert any(task in get_model_kind(k).tasks for k in model_kinds())


@pytest.mark.parametrize("kind", model_kinds())
def test_every_model_kind_names_its_tasks(kind):
    cls = get_model_kind(kind)
    assert cls.name == kind and set(cls.tasks) <= set(task_names()) and cls.library


@pytest.mark.parametrize("text, canonical, tag", [
    ("torchvision:resnet50", "torchvision:resnet50", "torchvision_resnet50"),
    ("hf:nvidia/segformer-b0-finetuned-ade-512-512", "hf:nvidia/segformer-b0-finetuned-ade-512-512",
     "hf_nvidia_segformer-b0-finetuned-ade-512-512"),
    ("hf:/tmp/my model", "hf:/tmp/my model", "hf_tmp_my_model"),
    ("pocketsphinx", "pocketsphinx", "pocketsphinx"),
])
def test_model_spec(text, canonical, tag):
    spec = ModelSpec.parse(text)
    assert spec.canonical == canonical and spec.tag == tag
    assert ModelSpec.parse(spec.canonical) == spec


@pytest.mark.parametrize("bad", ["", "torchvision:", "nope:x", ":x"])
def test_bad_model_spec(bad):
    with pytest.raises(ConfigError):
        ModelSpec.parse(bad)


def test_config_round_trip_and_checks():
    c = EvalConfig.create("OUT", "imagenet", "val", "classify", "timm:resnet18", codecs=["jpeg:quality=5"],
                          batch_size=8, limit=10, offline=True)
    assert EvalConfig.from_dict(c.to_dict()) == c
    assert c.name == "classify-timm_resnet18"
    for kw in ({"batch_size": 0}, {"limit": 0}, {"device": "tpu"}):
        with pytest.raises(ConfigError):
            EvalConfig.create("OUT", "imagenet", "val", "classify", "timm:resnet18", **kw)
    with pytest.raises(ConfigError, match="unknown task"):
        EvalConfig.create("OUT", "imagenet", "val", "detect", "timm:resnet18")


def test_readme_names_every_task_and_model_kind():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Evaluation"):]
    for task in task_names():
        assert f"| `{task}` |" in section, task
    for kind in model_kinds():
        assert f"`{kind}" in section, kind
