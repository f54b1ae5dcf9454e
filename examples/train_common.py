"""What the training examples share: the codec mixture, DDP under torchrun, the resumable loop.

``finetune.py`` (classification, segmentation, detection from trained weights) and ``pretrain.py``
(a classifier from scratch) differ only in their :class:`Recipe`: the loader, the model and the
loss. Everything that makes a run resumable lives here once: one checkpoint file holds the model,
the optimizer, the AMP scaler, the EMA weights and the loader's mid-epoch position gathered from
every rank, written atomically by rank 0; the learning rate is a function of the position in the
run (epoch and batch), so a resumed run goes on with the same rates. A job killed and restarted
with ``--resume`` trains on the samples it had not reached, none twice, even on another number of
ranks.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

DEFAULT_MIXTURE = {"jpeg:quality=5": 0.5, "none": 0.5}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics (torchvision's weights)


def add_common_arguments(p: argparse.ArgumentParser, *, lr: float | None, weight_decay: float, epochs: int,
                         schedule: str, warmup: float, amp: bool, checkpoint: str, output: str) -> None:
    """The options every example takes (data, optimisation, checkpoints); defaults differ per recipe."""
    p.add_argument("shards", help="output folder of `mpq transcode` (OUT)")
    p.add_argument("--codec", action="append", default=None,
                   help="a JSON {setting: weight} mixture, or a setting (SPEC or SPEC@WEIGHT; repeat for a "
                        f"mixture) [default: {json.dumps(DEFAULT_MIXTURE)}]")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=lr,
                   help="peak learning rate (after warmup)" + ("" if lr is not None else " [default: 0.1 per 256 images]"))
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=weight_decay)
    p.add_argument("--decay-norm-bias", action=argparse.BooleanOptionalAction, default=False,
                   help="also decay biases and normalization weights (every 1-D parameter)")
    p.add_argument("--schedule", choices=("constant", "cosine"), default=schedule,
                   help="learning rate after warmup: constant, or cosine down to 0 at the last epoch's end")
    p.add_argument("--warmup-epochs", type=float, default=warmup,
                   help="linear warmup from 1%% of --lr, in epochs (fractions allowed)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=amp,
                   help="mixed precision on GPUs (float16 autocast and a gradient scaler); ignored on the CPU")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="keep an exponential moving average of the weights (e.g. 0.9998) and write it to "
                        "OUTPUT with .ema before the suffix")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="deterministic resizes instead of random crops and flips (a run that replays exactly)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers per rank")
    p.add_argument("--seed", type=int, default=0, help="shuffle and mixture draws (and model init)")
    p.add_argument("--buffer", type=int, default=1000, help="shuffle buffer (samples)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--checkpoint", default=checkpoint, help="the resumable checkpoint file")
    p.add_argument("--save-every", type=int, default=500, help="steps between checkpoints (and at each epoch end)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint when it exists")
    p.add_argument("--output", default=output, help="the final state dict")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="save a checkpoint after this many steps of this run and exit, as if killed there")
    p.add_argument("--log-keys", default=None, help="folder: each rank appends the keys it trained on")
    p.add_argument("--log-every", type=int, default=20)


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
    """Join torchrun's process group (nccl on GPUs, gloo on CPU); a plain `python` run is one rank.

    torchrun over several nodes (``--nnodes N --rdzv-endpoint HOST:PORT``) sets the same variables.
    """
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


def make_loader(args: argparse.Namespace, dataset: str, split: str, transform: Any, collate: Callable,
                **options: Any):
    """The resumable loader over the mixture: shuffled from (seed, epoch), one setting per sample
    (``options``: further ``load()`` options, such as ``masks=True``)."""
    from pipeline.loaders import Loader, load

    ds = load(args.shards, dataset, split, codec=mixture(args.codec), shuffle=True, seed=args.seed,
              buffer=args.buffer, transform=transform, **options)
    return Loader(ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate)


def param_groups(net: torch.nn.Module, weight_decay: float, decay_norm_bias: bool) -> list[dict[str, Any]]:
    """Weight decay on weights only: biases and normalization weights (the 1-D parameters) get none,
    as in the ImageNet recipes (torchvision's ``--norm-weight-decay 0``, timm's ``no_weight_decay``)."""
    params = [p for p in net.parameters() if p.requires_grad]
    if decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def lr_factor(args: argparse.Namespace, progress: float) -> float:
    """The learning rate over ``--lr`` at ``progress`` epochs into the run (linear warmup, then the schedule)."""
    warm = args.warmup_epochs
    if warm > 0 and progress < warm:
        return 0.01 + 0.99 * progress / warm
    if args.schedule == "constant":
        return 1.0
    span = max(args.epochs - warm, 1e-9)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warm) / span)))


def to_device(x: Any, device: torch.device) -> Any:
    """Tensors, lists and dicts of them (detection targets) onto ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


@dataclass
class Recipe:
    """What an example trains: ``loader`` yields ``(keys, inputs, targets)`` batches; ``loss(model,
    inputs, targets)`` is the scalar to minimise; ``net`` is the bare model whose ``state_dict()``
    is the output (what ``mpq eval --weights`` loads)."""

    loader: Any
    net: torch.nn.Module
    loss: Callable[[torch.nn.Module, Any, Any], torch.Tensor]
    checkpoint_format: str


@dataclass
class State:
    """The run's mutable parts, saved together in one checkpoint."""

    model: torch.nn.Module  # DDP-wrapped when several ranks
    optimizer: torch.optim.Optimizer
    scaler: Any
    ema: Any
    step: int = 0
    ran: int = 0


def save_checkpoint(path: str, recipe: Recipe, st: State, rank: int) -> None:
    """Every rank calls this (the loader position is gathered); rank 0 writes one file, atomically.

    Under DDP's join context the buffers (BatchNorm statistics) every forward starts from are the
    highest rank's, not rank 0's: those are the ones saved, so a resumed run goes on exactly.
    """
    position = recipe.loader.state_dict(gather=dist.is_initialized())
    if dist.is_initialized() and dist.get_world_size() > 1:
        for buf in recipe.net.buffers():
            dist.broadcast(buf, src=dist.get_world_size() - 1)
    if rank == 0:
        state = {"format": recipe.checkpoint_format, "model": recipe.net.state_dict(),
                 "optimizer": st.optimizer.state_dict(), "loader": json.dumps(position), "step": st.step,
                 "scaler": st.scaler.state_dict(), "ema": st.ema.state_dict() if st.ema is not None else None}
        tmp = f"{path}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)
    if dist.is_initialized():
        dist.barrier()


def resume(path: str, recipe: Recipe, st: State) -> bool:
    """Restore model, optimizer, scaler, EMA and loader position; True when ranks and workers are the same."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != recipe.checkpoint_format:
        raise SystemExit(f"{path} is not a checkpoint of this script ({recipe.checkpoint_format})")
    recipe.net.load_state_dict(state["model"])
    st.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        st.scaler.load_state_dict(state["scaler"])
    if st.ema is not None and state.get("ema") is not None:
        st.ema.load_state_dict(state["ema"])
    position = json.loads(state["loader"])
    recipe.loader.load_state_dict(position)
    st.step = int(state["step"])
    return (position["world_size"], position["num_workers"]) == (recipe.loader.dataset.world_size,
                                                                 max(1, recipe.loader.num_workers))


def batches_left(loader, device: torch.device) -> tuple[int, int, int]:
    """(fewest batches any rank has left this epoch, most, most in a whole epoch): mid-epoch
    checkpoints are taken before any rank runs out; the schedule counts epochs in the longest rank's batches.

    Each DataLoader worker batches its own slice, so a rank's batches are summed per worker.
    """
    per = loader.dataset.worker_lengths(max(1, loader.num_workers))
    done = loader.state_dict()["consumed"].get(str(loader.dataset.rank), [0] * len(per))
    left = sum(math.ceil(max(0, a - b) / loader.batch_size) for a, b in zip(per, done))
    n = torch.tensor([left, -left, -len(loader)], device=device)
    if dist.is_initialized():
        dist.all_reduce(n, op=dist.ReduceOp.MIN)
    return int(n[0].item()), -int(n[1].item()), -int(n[2].item())


def build_state(args: argparse.Namespace, recipe: Recipe, world: int, device: torch.device) -> State:
    net = recipe.net.to(device)
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                                      else None) if world > 1 else net
    optimizer = torch.optim.SGD(param_groups(net, args.weight_decay, args.decay_norm_bias), lr=args.lr,
                                momentum=args.momentum)
    scaler = torch.amp.GradScaler(device.type, enabled=bool(args.amp) and device.type == "cuda")
    ema = None
    if args.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay), use_buffers=True)
    return State(model, optimizer, scaler, ema)


def fit(args: argparse.Namespace, recipe: Recipe, rank: int, world: int, device: torch.device) -> int:
    """Train ``recipe`` for ``--epochs`` (resuming from ``--checkpoint`` with ``--resume``), then write
    ``--output`` (and the EMA weights) as plain state dicts."""
    st = build_state(args, recipe, world, device)
    loader, same_layout = recipe.loader, True
    if args.resume and Path(args.checkpoint).is_file():
        same_layout = resume(args.checkpoint, recipe, st)
        if rank == 0:
            print(f"resumed at step {st.step}, epoch {loader.dataset.epoch}", flush=True)
    keys_log = None
    if args.log_keys:
        Path(args.log_keys).mkdir(parents=True, exist_ok=True)
        keys_log = open(Path(args.log_keys) / f"keys-rank{rank}.txt", "a")
    try:
        while loader.dataset.epoch < args.epochs:
            epoch = loader.dataset.epoch
            safe, most_left, per_epoch = batches_left(loader, device)
            if not same_layout:  # the rest of the epoch is split anew: no mid-epoch checkpoint until it ends
                safe, same_layout = 0, True
            if run_epoch(args, recipe, st, device, rank, safe, per_epoch - most_left, per_epoch, keys_log):
                return 0
            save_checkpoint(args.checkpoint, recipe, st, rank)
            if rank == 0:
                print(f"epoch {epoch} done at step {st.step}", flush=True)
        if rank == 0:
            write_outputs(args.output, recipe.net, st.ema)
            print(f"evaluate it with: {eval_command(args)}", flush=True)
        return 0
    finally:
        if keys_log is not None:
            keys_log.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def eval_command(args: argparse.Namespace) -> str:
    """The ``mpq eval`` command that evaluates the output on every finished set of the val split."""
    import shlex

    split = {"train": "val", "train2017": "val2017"}.get(args.split, "SPLIT")
    variant = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(args.output).stem)
    return (f"mpq eval {shlex.quote(args.shards)} --dataset {args.dataset} --split {split} --task {args.task} "
            f"--model {shlex.quote(args.model)} --weights {shlex.quote(args.output)} --variant {variant}")


def write_outputs(output: str, net: torch.nn.Module, ema: Any) -> None:
    """Plain tensors: each loads with torch.load(weights_only=True) into the bare architecture."""
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, output)
    print(f"wrote {output}", flush=True)
    if ema is not None:
        out = Path(output)
        path = out.with_name(f"{out.stem}.ema{out.suffix or '.pt'}")
        torch.save({k: v.detach().cpu() for k, v in ema.module.state_dict().items()}, path)
        print(f"wrote {path}", flush=True)


def run_epoch(args, recipe: Recipe, st: State, device: torch.device, rank: int, safe: int, done: int,
              per_epoch: int, keys_log) -> bool:
    """One pass (or what is left of it, ``done`` batches in); True when stopped as asked."""
    from torch.distributed.algorithms.join import Join

    model, loader = st.model, recipe.loader
    model.train()
    epoch, start, in_epoch = loader.dataset.epoch, time.perf_counter(), 0
    amp = st.scaler.is_enabled()
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    with Join([model]) if ddp else contextlib.nullcontext():  # ranks may differ by one batch at the end
        for keys, inputs, targets in loader:
            factor = lr_factor(args, epoch + min(1.0, (done + in_epoch) / max(1, per_epoch)))
            for group in st.optimizer.param_groups:
                group["lr"] = args.lr * factor
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = recipe.loss(model, to_device(inputs, device), to_device(targets, device))
            st.optimizer.zero_grad(set_to_none=True)
            st.scaler.scale(loss).backward()
            st.scaler.step(st.optimizer)
            st.scaler.update()
            if st.ema is not None:
                st.ema.update_parameters(recipe.net)
            st.step, st.ran, in_epoch = st.step + 1, st.ran + 1, in_epoch + 1
            if keys_log is not None:
                keys_log.write("".join(f"{k}\n" for k in keys))
                keys_log.flush()
            if rank == 0 and st.step % args.log_every == 0:
                rate = in_epoch * len(keys) / (time.perf_counter() - start)
                print(f"step {st.step} loss {loss.item():.4f} lr {args.lr * factor:.5g} "
                      f"({rate:.1f} samples/s per rank)", flush=True)
            # mid-epoch checkpoints only while every rank still has batches (the position is gathered)
            if in_epoch <= safe and (st.ran == args.stop_after_steps or st.step % args.save_every == 0):
                save_checkpoint(args.checkpoint, recipe, st, rank)
                if st.ran == args.stop_after_steps:
                    if rank == 0:
                        print(f"stopped after {st.ran} steps (step {st.step}); continue with --resume", flush=True)
                    return True
    return False
