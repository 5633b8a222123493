"""One training loop for every objective, on HF Accelerate: CPU, one GPU, many GPUs or machines.

``fit(objective, train_set, val_set, config, output_dir)`` trains ``objective.parameters()`` to
minimise ``objective(batch)["loss"]`` and knows nothing else about the loss: other entries of
the returned dict are logged as they come. ``objective.model`` is the network that is evaluated
(top-1/top-5 on ``val_set``) after every epoch.

The loop, in order, per batch: move to device -> optional timm Mixup/CutMix -> forward (autocast
on GPU with ``mixed_precision``) -> NaN/inf check -> backward (gradients of ``grad_accum`` batches
are accumulated; DDP synchronises only on the last) -> optional clipping -> per-step callbacks ->
AdamW step -> cosine-with-warm-up LR step. A checkpoint is written at the end of every epoch (and
every ``checkpoint_every`` optimizer steps), atomically (:mod:`minivit.train.state`).

Run several processes with ``accelerate launch --num_processes N ...`` or ``torchrun`` and the same
code runs DDP: ``batch_size`` is per process, so the global batch is
``batch_size x processes x grad_accum``. Weight sharing needs nothing special under DDP: a shared
block used k times per step accumulates its gradient over the k uses before DDP's hook fires
once; ``find_unused_parameters`` is switched on only if a probe step finds parameters without
gradients.

Exact resume: data order and augmentation are functions of (seed, epoch, step, rank)
(:mod:`minivit.train.data`), and checkpoints hold model, optimizer, scheduler, scaler, position
and every process's RNG states, so a resumed run produces the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..errors import CheckpointError, ConfigError, MinivitError
from .data import EpochBatchSampler, SeededBatches
from .state import LAST, atomic_write, load_checkpoint, rng_state, save_checkpoint, set_rng_state

__all__ = ["TrainConfig", "StepContext", "TrainingError", "fit", "evaluate", "config_diff"]


def processes() -> PartialState:
    """This process's view of the run (rank, world size, device); CPU-only machines run DDP over gloo."""
    return PartialState(cpu=not torch.cuda.is_available())


def say(message: str) -> None:
    """The default log: a line on stdout, flushed (progress stays visible when stdout is a file)."""
    print(message, flush=True)


class TrainingError(MinivitError):
    """Training cannot go on (loss not finite); the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """How to train. ``batch_size`` is per process; ``warmup_epochs`` may be fractional."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_accum: int = 1
    clip_grad: float | None = None
    mixup: float = 0.0  # timm Mixup alpha (0: off)
    cutmix: float = 0.0  # timm CutMix alpha (0: off)
    label_smoothing: float = 0.0  # applied through Mixup's targets when mixup/cutmix is on
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints (0: epoch ends only)
    mixed_precision: str = "no"  # "no", "fp16" or "bf16"; GPU only
    eval_batch_size: int | None = None
    progress: bool = True  # tqdm bars (main process, terminal only)

    def check(self) -> TrainConfig:
        ints = {"epochs": 1, "batch_size": 1, "grad_accum": 1, "num_workers": 0, "checkpoint_every": 0}
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
        for name in ("lr", "min_lr", "weight_decay", "warmup_epochs", "mixup", "cutmix", "label_smoothing"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ConfigError(f"clip_grad must be positive, got {self.clip_grad!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"unknown mixed precision {self.mixed_precision!r}", "use no, fp16 or bf16")
        return self


@dataclass
class StepContext:
    """What a per-step callback sees: gradients are ready (synchronised), the optimizer has not stepped."""

    epoch: int  # 0-based
    step: int  # optimizer steps done before this one
    terms: dict[str, float]  # this step's loss terms (last micro-batch)
    lr: float
    model: nn.Module  # objective.model, unwrapped
    objective: nn.Module  # unwrapped
    optimizer: torch.optim.Optimizer
    accelerator: Accelerator


Callback = Callable[[StepContext], None]


# --------------------------------------------------------------------------- building blocks


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay for biases, norms (1-d) and the model's ``no_weight_decay()`` names."""
    skip = set()
    for prefix, m in module.named_modules():
        if hasattr(m, "no_weight_decay"):
            skip |= {f"{prefix}.{n}" if prefix else n for n in m.no_weight_decay()}
    decay, no_decay = [], []
    for name, p in module.named_parameters():  # shared parameters appear once
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cosine_schedule(optimizer, total_steps: int, warmup_steps: int, min_ratio: float):
    """Linear warm-up to the base LR, then cosine decay to ``min_ratio x`` base LR, per optimizer step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 256, device=None) -> dict:
    """Top-1/top-5 accuracy (%) and mean cross-entropy of ``model`` on a dataset or loader."""
    sums = _eval_sums(model, data, batch_size, device, contextlib.nullcontext)
    return _eval_metrics(sums)


def _eval_sums(model, data, batch_size, device, autocast) -> torch.Tensor:
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss sum, count
    with torch.no_grad():
        for batch in loader:
            images, targets = batch[0].to(device), batch[1].to(device)
            with autocast():
                logits = model(images)
            logits = logits.float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]
            sums += torch.stack(
                [
                    top[:, 0].sum().double(),
                    top.any(dim=1).sum().double(),
                    F.cross_entropy(logits, targets, reduction="sum").double(),
                    torch.tensor(len(targets), dtype=torch.float64, device=device),
                ]
            )
    model.train(was_training)
    return sums


def _eval_metrics(sums: torch.Tensor) -> dict:
    c1, c5, loss, n = sums.tolist()
    n = max(n, 1.0)
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n}


def config_diff(old: dict, new: dict) -> list[str]:
    """``["key: old -> new", ...]`` for every differing top-level key."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys if old.get(k) != new.get(k)]


def _unused_parameters(objective: nn.Module, batch) -> list[str]:
    """Names of trainable parameters that get no gradient from one step (DDP must be told)."""
    with torch.random.fork_rng(devices=[]):
        objective(batch)["loss"].backward()
    unused = [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None]
    objective.zero_grad(set_to_none=True)
    return unused


def _collate(samples):
    return torch.utils.data.default_collate(samples)


def _tensorboard(folder: Path):
    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder))


# --------------------------------------------------------------------------- the loop


def fit(
    objective: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    config: TrainConfig,
    output_dir: str | Path,
    *,
    run_config: dict | None = None,
    resume: bool = False,
    force: bool = False,
    callbacks: Sequence[Callback] = (),
    log: Callable[[str], None] | None = say,
) -> dict:
    """Train ``objective`` and return ``{"history": [per-epoch records], "final": ..., "best_top1": ...}``.

    ``output_dir`` receives ``checkpoints/last.pt`` (+ ``best.pt``), ``metrics.jsonl`` (one JSON
    record per epoch) and ``tensorboard/`` when TensorBoard is installed. ``run_config`` (JSON-able)
    is stored in checkpoints; ``resume=True`` continues from ``checkpoints/last.pt`` (if there is
    one) and refuses a different ``run_config`` unless ``force``.
    """
    cfg = config.check()
    out = Path(output_dir)
    ckpt_dir = out / "checkpoints"
    run_config = json.loads(json.dumps(run_config or {}, default=str))
    if len(train_set) == 0 or len(val_set) == 0:
        raise ConfigError("the training and validation sets must not be empty")

    # -- processes, devices, precision
    proc = processes()
    world = proc.num_processes
    mixed = cfg.mixed_precision
    if mixed != "no" and not torch.cuda.is_available():
        warnings.warn(f"mixed precision {mixed} needs a GPU; training in float32 on CPU", stacklevel=2)
        mixed = "no"
    loader_kwargs = dict(num_workers=cfg.num_workers, collate_fn=_collate, generator=torch.Generator())
    probe = DataLoader(SeededBatches(train_set), batch_sampler=[[0, min(1, len(train_set) - 1)]], **loader_kwargs)
    unused = []
    if world > 1:
        objective.to(proc.device)
        unused = _unused_parameters(objective, [t.to(proc.device) for t in next(iter(probe))])
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=bool(unused))] if world > 1 else []
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available(), kwargs_handlers=handlers)
    rank, device, main = accelerator.process_index, accelerator.device, accelerator.is_main_process
    note = log if (log is not None and main) else (lambda _msg: None)
    if unused:
        note(f"note: {len(unused)} parameters get no gradient (e.g. {unused[0]}); DDP finds unused parameters")

    # -- data: order and augmentation depend on (seed, epoch, step, rank) only
    mixup_fn = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data import Mixup

        num_classes = getattr(objective.model, "num_classes", None)
        mixup_fn = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.label_smoothing,
            num_classes=num_classes,
        )
    sampler = EpochBatchSampler(len(train_set), cfg.batch_size, cfg.seed, rank, world, drop_last=mixup_fn is not None)
    if len(sampler) == 0:
        raise ConfigError(f"batch size {cfg.batch_size} is larger than the training set ({len(train_set)} samples)")
    loader = DataLoader(SeededBatches(train_set), batch_sampler=sampler, **loader_kwargs)
    val_loader = DataLoader(
        Subset(val_set, range(rank, len(val_set), world)),
        batch_size=cfg.eval_batch_size or cfg.batch_size,
        **loader_kwargs,
    )
    batches = len(sampler)
    steps_per_epoch = math.ceil(batches / cfg.grad_accum)

    # -- optimisation
    optimizer = torch.optim.AdamW(param_groups(objective, cfg.weight_decay), lr=cfg.lr)
    scheduler = cosine_schedule(
        optimizer, cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr / cfg.lr
    )

    # -- resume
    start_epoch, skip, step, best, history = 0, 0, 0, -1.0, []
    sums, seen, elapsed = {}, 0, 0.0
    state = None
    if resume and (ckpt_dir / LAST).is_file():
        state = load_checkpoint(ckpt_dir / LAST)
        diff = config_diff(state.get("config", {}), run_config)
        if diff and not force:
            raise ConfigError(
                f"{ckpt_dir / LAST} was made with a different configuration ({'; '.join(diff)})",
                "resume with the same options, or pass --force to continue anyway",
            )
        try:
            objective.load_state_dict(state["objective"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint does not fit the model: {first}", "resume with the same model") from None
        start_epoch, skip, step = state["epoch"], state["batches_done"], state["step"]
        best, history = state["best_top1"], state["history"]
        sums, seen, elapsed = state["epoch_sums"], state["epoch_images"], state["epoch_time"]
        if state["world_size"] != world:
            if not force:
                raise ConfigError(
                    f"checkpoint was written by {state['world_size']} processes, this run has {world}",
                    "resume with the same number of processes, or pass --force",
                )
            skip = skip * state["world_size"] // world
    objective, optimizer = accelerator.prepare(objective, optimizer)
    core = accelerator.unwrap_model(objective)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state.get("scaler") is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        note(f"resumed from {ckpt_dir / LAST}: epoch {start_epoch + 1}, batch {skip}, step {step}")
    if state is not None and state["world_size"] == world:
        set_rng_state(state["rng"][rank])
    else:
        torch.manual_seed(cfg.seed + rank)
        random.seed(cfg.seed + rank)
        np.random.seed((cfg.seed + rank) % 2**32)
    del state

    def checkpoint(epoch: int, batches_done: int, is_best: bool = False) -> None:
        rngs = gather_object([rng_state()]) if world > 1 else [rng_state()]
        error = None
        if main:
            payload = {
                "objective": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "epoch": epoch,
                "batches_done": batches_done,
                "step": step,
                "world_size": world,
                "best_top1": best,
                "history": history,
                "epoch_sums": sums,
                "epoch_images": seen,
                "epoch_time": elapsed,
                "config": run_config,
                "rng": rngs,
            }
            try:
                save_checkpoint(ckpt_dir, payload, best=is_best)
            except CheckpointError as e:
                error = e
        failed = error is not None
        if world > 1:
            failed = accelerator.reduce(torch.tensor(float(failed), device=device), "sum").item() > 0
        if failed:
            raise error or CheckpointError("the main process could not write its checkpoint")

    writer = _tensorboard(out / "tensorboard") if main else None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch, skip)
            objective.train()
            show = None if (main and cfg.progress) else True  # None: only on a terminal
            bar = tqdm(
                total=batches,
                initial=skip,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                leave=False,
                dynamic_ncols=True,
                disable=show,
            )
            tick = time.perf_counter()
            for i, batch in enumerate(loader, start=skip):
                batch = [t.to(device, non_blocking=True) for t in batch]
                if mixup_fn is not None:
                    batch[0], batch[1] = mixup_fn(batch[0], batch[1])
                group_start = i - i % cfg.grad_accum
                group = min(cfg.grad_accum, batches - group_start)
                sync = i + 1 == group_start + group
                with contextlib.nullcontext() if sync else accelerator.no_sync(objective):
                    with accelerator.autocast():
                        terms = objective(batch)
                    loss = terms["loss"]
                    bad = ~torch.isfinite(loss.detach())
                    if world > 1:
                        bad = accelerator.reduce(bad.float(), "sum") > 0
                    if bad:
                        values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                        raise TrainingError(
                            f"loss is not finite at epoch {epoch + 1}, step {step + 1} ({values}); training stopped, "
                            f"the last good checkpoint is kept in {ckpt_dir}",
                            "lower --lr or set --clip-grad",
                        )
                    accelerator.backward(loss / group)
                values = {k: float(v.detach()) for k, v in terms.items()}
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v * len(batch[0])
                seen += len(batch[0])
                bar.update(1)
                if not sync:
                    continue
                if cfg.clip_grad is not None:
                    accelerator.clip_grad_norm_(objective.parameters(), cfg.clip_grad)
                lr = optimizer.param_groups[0]["lr"]
                for callback in callbacks:
                    callback(StepContext(epoch, step, values, lr, core.model, core, optimizer, accelerator))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                now = time.perf_counter()
                elapsed, tick = elapsed + now - tick, now
                bar.set_postfix(
                    {k: f"{v:.3f}" for k, v in values.items()} | {"img/s": f"{seen * world / max(elapsed, 1e-9):.0f}"},
                    refresh=False,
                )
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and i + 1 < batches:
                    checkpoint(epoch, i + 1)
                    tick = time.perf_counter()  # checkpoint writing is not training time
            bar.close()

            # -- end of epoch: evaluate, record, checkpoint
            eval_sums = _eval_sums(core.model, val_loader, None, device, accelerator.autocast)
            if world > 1:
                eval_sums = accelerator.reduce(eval_sums, "sum")
            val = _eval_metrics(eval_sums)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": optimizer.param_groups[0]["lr"],
                **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
                **{f"val_{k}": v for k, v in val.items()},
                "img_per_s": seen * world / max(elapsed, 1e-9),
                "epoch_time_s": elapsed,
            }
            history.append(record)
            is_best = val["top1"] > best
            best = max(best, val["top1"])
            skip, sums, seen, elapsed = 0, {}, 0, 0.0
            checkpoint(epoch + 1, 0, is_best)
            if main:
                lines = "".join(json.dumps(r) + "\n" for r in history)
                atomic_write(out / "metrics.jsonl", lambda f, text=lines: f.write(text.encode()))
                if writer is not None:
                    for k, v in record.items():
                        if k != "epoch":
                            writer.add_scalar(k, v, epoch + 1)
                    writer.flush()
            terms_text = " ".join(f"{k[6:]} {v:.4f}" for k, v in record.items() if k.startswith("train_"))
            note(
                f"epoch {epoch + 1}/{cfg.epochs}  {terms_text}  val top-1 {val['top1']:.2f} top-5 {val['top5']:.2f}"
                f"  {record['img_per_s']:.0f} img/s  {record['epoch_time_s']:.1f} s"
            )
    finally:
        if writer is not None:
            writer.close()
    return {"history": history, "final": history[-1] if history else None, "best_top1": best, "world_size": world}
