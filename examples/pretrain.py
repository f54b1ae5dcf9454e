"""Pre-train a torchvision classifier from scratch on shards of one codec setting or a mixture: the ImageNet recipe, DDP, resumable mid-epoch.

    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        examples/pretrain.py shards --codec jpeg:quality=10 --arch resnet50 --output resnet50-jpeg10.pt

The standard recipe (torchvision's ResNet-50 reference, the "linear scaling" of Goyal et al.): SGD
with momentum 0.9 and Nesterov off, a peak learning rate of 0.1 per 256 images of global batch,
linear warmup over 5 epochs then cosine to 0 at epoch 90, label smoothing 0.1, weight decay 1e-4 on
weights only (no decay on biases and normalization weights), random resized crops of 224 and
flips, mixed precision on GPUs, and an optional EMA of the weights (``--ema-decay``). Everything
that makes it resumable and distributed is shared with ``finetune.py`` (``train_common.py``), and
the classification recipe with its ``--task classify`` (``train_tasks.py``). The output is a plain
state dict for ``torchvision.models.get_model(ARCH, num_classes=N)``; the script prints the
``mpq eval --weights`` command that evaluates it on every val set.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_common, train_tasks beside this file

import train_common  # noqa: E402
import train_tasks  # noqa: E402

CHECKPOINT_FORMAT = "mpq-pretrain/1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="imagenet")
    p.add_argument("--split", default="train")
    p.add_argument("--arch", default="resnet50", help="torchvision model name (torchvision.models.get_model)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--size", type=int, default=224, help="training crop size")
    train_common.add_common_arguments(p, lr=None, weight_decay=1e-4, epochs=90, schedule="cosine", warmup=5.0,
                                      amp=True, checkpoint="pretrain-checkpoint.pt", output="pretrained.pt")
    args = p.parse_args(argv)
    if not args.codec:
        p.error("--codec: give the setting (or mixture) to pre-train on, e.g. --codec none or --codec jpeg:quality=10")
    args.task, args.model = "classify", f"torchvision:{args.arch}"
    return args


def train(args: argparse.Namespace) -> int:
    rank, world, device = train_common.init(args)
    if args.lr is None:  # 0.1 per 256 images of global batch
        args.lr = 0.1 * args.batch_size * world / 256
    recipe = train_tasks.classify_recipe(args, CHECKPOINT_FORMAT)
    return train_common.fit(args, recipe, rank, world, device)


if __name__ == "__main__":
    sys.exit(train(parse_args()))
