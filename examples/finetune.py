"""Fine-tune a classifier, a segmentation model or a detector on shards of a codec mixture, with DDP; resumable mid-epoch.

    torchrun --nproc-per-node 2 examples/finetune.py shards --arch resnet50 \\
        --codec '{"jpeg:quality=5": 0.5, "none": 0.5}' --weights resnet50.pt --epochs 1 --output finetuned.pt
    torchrun --nproc-per-node 8 examples/finetune.py shards --task segment \\
        --model hf:nvidia/segformer-b0-finetuned-ade-512-512 --codec jpeg:quality=5 --output segformer-jpeg5.pt
    torchrun --nproc-per-node 8 examples/finetune.py shards --task detect --batch-size 2 \\
        --model torchvision:fasterrcnn_resnet50_fpn_v2 --torchvision-weights DEFAULT --codec jpeg:quality=5 \\
        --output frcnn-jpeg5.pt

Each sample comes from one setting of the mixture, drawn from (seed, epoch, key). One checkpoint
file holds the model, the optimizer and the loader's mid-epoch position (gathered from every rank),
so a job killed and restarted with ``--resume`` goes on with the samples it had not trained on yet,
even on another number of ranks. The final ``--output`` is a plain state dict (tensors only) that
``torch.load(FILE, weights_only=True)`` loads into the architecture: what ``mpq eval --task TASK
--model MODEL --weights FILE`` evaluates. Runs on CPU (gloo) or GPUs (nccl); the DDP, mixture and
resume code is shared with ``pretrain.py`` (``train_common.py``), the recipes per task are in
``train_tasks.py``; see examples/README.md for the whole study.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_common, train_tasks beside this file

import train_common  # noqa: E402
import train_tasks  # noqa: E402
from train_common import mixture  # noqa: E402,F401  (the --codec parser, used by callers of this module)

CHECKPOINT_FORMAT = "mpq-finetune/1"
# per task: dataset, split, classes, crop size
TASKS = {"classify": ("imagenet", "train", 1000, 224), "segment": ("ade20k", "train", 150, 512),
         "detect": ("coco", "train2017", 91, 0)}
RECIPES = {"classify": train_tasks.classify_recipe, "segment": train_tasks.segment_recipe,
           "detect": train_tasks.detect_recipe}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="classify")
    p.add_argument("--dataset", default=None, help="[default: imagenet, ade20k or coco by --task]")
    p.add_argument("--split", default=None, help="[default: train, or train2017 for coco]")
    p.add_argument("--model", default=None,
                   help="torchvision:NAME (every task) or hf:NAME_OR_FOLDER (segment) [default: torchvision:ARCH; "
                        "for detect give it, e.g. torchvision:fasterrcnn_resnet50_fpn_v2]")
    p.add_argument("--arch", default="resnet50", help="classify: the torchvision name, as --model torchvision:ARCH")
    p.add_argument("--num-classes", type=int, default=None,
                   help="[default: 1000 classify, 150 segment, 91 detect (COCO ids 1..90 and background)]")
    p.add_argument("--weights", default=None, help="state dict to start from (loaded with weights_only=True)")
    p.add_argument("--torchvision-weights", default=None,
                   help="classify, detect: start from torchvision's own weights instead (e.g. DEFAULT)")
    p.add_argument("--backbone-weights", default=None,
                   help="segment/detect with torchvision: ImageNet weights of the backbone (e.g. DEFAULT)")
    p.add_argument("--aux-loss", action="store_true", help="segment with torchvision: train the auxiliary head too")
    p.add_argument("--offline", action="store_true", help="hf: read the model from the Hugging Face cache only")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="classify")
    p.add_argument("--size", type=int, default=None,
                   help="training crop size [default: 224 classify, 512 segment; detectors resize inside]")
    train_common.add_common_arguments(p, lr=0.01, weight_decay=1e-4, epochs=1, schedule="constant", warmup=0.0,
                                      amp=False, checkpoint="finetune-checkpoint.pt", output="finetuned.pt")
    args = p.parse_args(argv)
    dataset, split, classes, size = TASKS[args.task]
    args.dataset = args.dataset or dataset
    args.split = args.split or split
    args.num_classes = args.num_classes or classes
    args.size = args.size or size
    if args.task == "detect" and not args.model:
        p.error("--task detect: give --model torchvision:NAME (a torchvision detector)")
    args.model = args.model or f"torchvision:{args.arch}"
    return args


def train(args: argparse.Namespace) -> int:
    rank, world, device = train_common.init(args)
    recipe = RECIPES[args.task](args, CHECKPOINT_FORMAT)
    return train_common.fit(args, recipe, rank, world, device)


if __name__ == "__main__":
    sys.exit(train(parse_args()))
