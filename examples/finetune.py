"""Fine-tune a torchvision classifier on ImageNet shards of a codec mixture, with DDP; resumable mid-epoch.

    torchrun --nproc-per-node 2 examples/finetune.py shards --arch resnet50 \\
        --codec '{"jpeg:quality=5": 0.5, "none": 0.5}' --weights resnet50.pt --epochs 1 --output finetuned.pt

Each sample comes from one setting of the mixture, drawn from (seed, epoch, key). One checkpoint
file holds the model, the optimizer and the loader's mid-epoch position (gathered from every rank),
so a job killed and restarted with ``--resume`` goes on with the samples it had not trained on yet,
even on another number of ranks. The final ``--output`` is a plain state dict (tensors only) that
``torch.load(FILE, weights_only=True)`` loads into ``torchvision.models.get_model(ARCH,
num_classes=N)``: what ``mpq eval --task classify --model torchvision:ARCH --weights FILE`` evaluates.
Runs on CPU (gloo) or GPUs (nccl); see examples/README.md for the whole study.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_MIXTURE = {"jpeg:quality=5": 0.5, "none": 0.5}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics (torchvision's weights)
CHECKPOINT_FORMAT = "mpq-finetune/1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shards", help="output folder of `mpq transcode` (OUT)")
    p.add_argument("--dataset", default="imagenet")
    p.add_argument("--split", default="train")
    p.add_argument("--codec", action="append", default=None,
                   help="a JSON {setting: weight} mixture, or a setting (SPEC or SPEC@WEIGHT; repeat for a "
                        f"mixture) [default: {json.dumps(DEFAULT_MIXTURE)}]")
    p.add_argument("--arch", default="resnet50", help="torchvision model name (torchvision.models.get_model)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--weights", default=None, help="state dict to start from (loaded with weights_only=True)")
    p.add_argument("--torchvision-weights", default=None,
                   help="start from torchvision's own weights instead (e.g. DEFAULT; from its cache or a download)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--size", type=int, default=224, help="training crop size")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="resize and centre-crop instead of random crops and flips (a run that replays exactly)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers per rank")
    p.add_argument("--seed", type=int, default=0, help="shuffle and mixture draws (and model init)")
    p.add_argument("--buffer", type=int, default=1000, help="shuffle buffer (samples)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--checkpoint", default="finetune-checkpoint.pt", help="the resumable checkpoint file")
    p.add_argument("--save-every", type=int, default=500, help="steps between checkpoints (and at each epoch end)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    p.add_argument("--output", default="finetuned.pt", help="the final state dict")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="save a checkpoint after this many steps of this run and exit, as if killed there")
    p.add_argument("--log-keys", default=None, help="folder: each rank appends the keys it trained on")
    p.add_argument("--log-every", type=int, default=20)
    return p.parse_args(argv)


def mixture(values: list[str] | None) -> dict[str, float]:
    """``--codec`` values to a {setting: weight} dict: one JSON object, or settings with optional @weight."""
    if not values:
        return dict(DEFAULT_MIXTURE)
    if len(values) == 1 and values[0].lstrip().startswith("{"):
        out = json.loads(values[0])
        if not isinstance(out, dict) or not out:
            raise SystemExit("--codec: the JSON must be a non-empty {setting: weight} object")
        return {str(k): float(v) for k, v in out.items()}
    out = {}
    for v in values:
        spec, _, weight = v.partition("@")
        out[spec] = float(weight) if weight else 1.0
    return out


def init(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    """Join torchrun's process group (nccl on GPUs, gloo on CPU); a plain `python` run is one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return rank, world, device


def collate(samples: list[dict[str, Any]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(keys, images, labels): only what training needs, so records of any shape batch."""
    keys = [s["__key__"] for s in samples]
    images = torch.stack([s["image"] for s in samples])
    labels = torch.tensor([int(s["label"]) for s in samples], dtype=torch.long)
    return keys, images, labels


def make_loader(args: argparse.Namespace):
    from torchvision.transforms import v2

    from pipeline.loaders import Loader, load

    crop = ([v2.RandomResizedCrop(args.size, antialias=True), v2.RandomHorizontalFlip()] if args.augment
            else [v2.Resize(args.size, antialias=True), v2.CenterCrop(args.size)])
    transform = v2.Compose([*crop, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    ds = load(args.shards, args.dataset, args.split, codec=mixture(args.codec), shuffle=True, seed=args.seed,
              buffer=args.buffer, transform=transform)
    return Loader(ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate)


def make_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from torchvision.models import get_model

    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    if args.torchvision_weights:
        model = get_model(args.arch, weights=args.torchvision_weights)
        if args.num_classes != 1000:
            raise SystemExit("--torchvision-weights are 1000-class ImageNet weights; use --weights for others")
    else:
        model = get_model(args.arch, weights=None, num_classes=args.num_classes)
    if args.weights:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.to(device)


def save_checkpoint(path: str, model: torch.nn.Module, optimizer, loader, step: int, rank: int) -> None:
    """Every rank calls this (the loader position is gathered); rank 0 writes one file, atomically.

    Under DDP's join context the buffers (BatchNorm statistics) every forward starts from are the
    highest rank's, not rank 0's: those are the ones saved, so a resumed run goes on exactly.
    """
    position = loader.state_dict(gather=dist.is_initialized())
    if dist.is_initialized() and dist.get_world_size() > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=dist.get_world_size() - 1)
    if rank == 0:
        state = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "loader": json.dumps(position), "step": step}
        tmp = f"{path}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)
    if dist.is_initialized():
        dist.barrier()


def resume(path: str, model: torch.nn.Module, optimizer, loader) -> tuple[int, bool]:
    """Restore model, optimizer and loader position; returns (global step reached, same ranks and workers)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"{path} is not a checkpoint of this script")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    position = json.loads(state["loader"])
    loader.load_state_dict(position)
    same = (position["world_size"], position["num_workers"]) == (loader.dataset.world_size,
                                                                 max(1, loader.num_workers))
    return int(state["step"]), same


def common_steps(loader, device: torch.device) -> int:
    """Batches every rank has left this epoch: mid-epoch checkpoints are taken before any rank runs out.

    Each DataLoader worker batches its own slice, so a rank's batches are summed per worker.
    """
    per = loader.dataset.worker_lengths(max(1, loader.num_workers))
    done = loader.state_dict()["consumed"].get(str(loader.dataset.rank), [0] * len(per))
    left = sum(math.ceil(max(0, a - b) / loader.batch_size) for a, b in zip(per, done))
    n = torch.tensor([left], device=device)
    if dist.is_initialized():
        dist.all_reduce(n, op=dist.ReduceOp.MIN)
    return int(n.item())


def train(args: argparse.Namespace) -> int:
    rank, world, device = init(args)
    loader = make_loader(args)
    net = make_model(args, device)
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                                      else None) if world > 1 else net
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    step, same_layout = 0, True
    if args.resume and Path(args.checkpoint).is_file():
        step, same_layout = resume(args.checkpoint, net, optimizer, loader)
        if rank == 0:
            print(f"resumed at step {step}, epoch {loader.dataset.epoch}", flush=True)
    keys_log = None
    if args.log_keys:
        Path(args.log_keys).mkdir(parents=True, exist_ok=True)
        keys_log = open(Path(args.log_keys) / f"keys-rank{rank}.txt", "a")
    try:
        ran = 0
        while loader.dataset.epoch < args.epochs:
            epoch, safe = loader.dataset.epoch, common_steps(loader, device)
            if not same_layout:  # the rest of the epoch is split anew: no mid-epoch checkpoint until it ends
                safe, same_layout = 0, True
            stopped, step, ran = run_epoch(args, model, net, optimizer, loader, device, rank, step, ran, safe,
                                           keys_log)
            if stopped:
                return 0
            save_checkpoint(args.checkpoint, net, optimizer, loader, step, rank)
            if rank == 0:
                print(f"epoch {epoch} done at step {step}", flush=True)
        if rank == 0:  # plain tensors: loads with torch.load(weights_only=True) into get_model(arch)
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, args.output)
            print(f"wrote {args.output}", flush=True)
        return 0
    finally:
        if keys_log is not None:
            keys_log.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def run_epoch(args, model, net, optimizer, loader, device, rank: int, step: int, ran: int, safe: int,
              keys_log) -> tuple[bool, int, int]:
    """One pass (or what is left of it); returns (stopped as asked, global step, steps of this run)."""
    from torch.distributed.algorithms.join import Join

    model.train()
    loss_fn = torch.nn.CrossEntropyLoss()
    start, in_epoch = time.perf_counter(), 0
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    with Join([model]) if ddp else contextlib.nullcontext():  # ranks may differ by one batch at the end
        for keys, images, labels in loader:
            loss = loss_fn(model(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step, ran, in_epoch = step + 1, ran + 1, in_epoch + 1
            if keys_log is not None:
                keys_log.write("".join(f"{k}\n" for k in keys))
                keys_log.flush()
            if rank == 0 and step % args.log_every == 0:
                rate = in_epoch * len(keys) / (time.perf_counter() - start)
                print(f"step {step} loss {loss.item():.4f} ({rate:.1f} samples/s per rank)", flush=True)
            # mid-epoch checkpoints only while every rank still has batches (the position is gathered)
            if in_epoch <= safe and (ran == args.stop_after_steps or step % args.save_every == 0):
                save_checkpoint(args.checkpoint, net, optimizer, loader, step, rank)
                if ran == args.stop_after_steps:
                    if rank == 0:
                        print(f"stopped after {ran} steps (step {step}); continue with --resume", flush=True)
                    return True, step, ran
    return False, step, ran


if __name__ == "__main__":
    sys.exit(train(parse_args()))
