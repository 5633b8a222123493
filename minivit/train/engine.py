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
from dataclasses import dataclass, field
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

__all__ = ["Loop", "Position", "TrainConfig", "StepContext", "TrainingError", "fit", "evaluate", "config_diff"]


def processes() -> PartialState:
    """This process's view of the run (rank, world size, device); CPU-only machines run DDP over gloo."""
    return PartialState(cpu=not torch.cuda.is_available())


def _device_name(device: torch.device) -> str:
    """``cpu``, or the device and the GPU's name (``cuda (NVIDIA H200)``): where a run trained, for its report."""
    if device.type != "cuda":
        return str(device)
    return f"{device} ({torch.cuda.get_device_name(device)})"


def say(message: str) -> None:
    """The default log: a line on stdout, flushed (progress stays visible when stdout is a file)."""
    print(message, flush=True)


class TrainingError(MinivitError):
    """Training cannot go on (loss not finite); the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """How to train. ``batch_size`` is per process; ``warmup_epochs`` may be fractional.

    Each field's ``metadata["help"]`` is its help text (the CLI builds its flags from the fields);
    ``metadata["min"]`` is the smallest value the CLI accepts, ``"required"`` that the CLI asks for it.
    """

    epochs: int = field(default=10, metadata={"help": "training epochs", "min": 1, "required": True})
    batch_size: int = field(default=128, metadata={"help": "images per step and process", "min": 1})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    min_lr: float = field(default=1e-5, metadata={"help": "final cosine learning rate"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases and norms)"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warm-up, may be fractional"})
    grad_accum: int = field(default=1, metadata={"help": "accumulate gradients over N batches", "min": 1})
    clip_grad: float | None = field(
        default=None, metadata={"help": "clip the gradient norm to this value", "type": float}
    )
    mixup: float = field(default=0.0, metadata={"help": "timm Mixup alpha (0: off)"})
    cutmix: float = field(default=0.0, metadata={"help": "timm CutMix alpha (0: off)"})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "label smoothing (through Mixup's targets when mixup/cutmix is on)"}
    )
    seed: int = field(default=0, metadata={"help": "model init, data order, augmentation, drop-path"})
    num_workers: int = field(default=0, metadata={"help": "data loader worker processes", "min": 0})
    checkpoint_every: int = field(
        default=0, metadata={"help": "also checkpoint every N optimizer steps (0: epoch ends only)", "min": 0}
    )
    mixed_precision: str = field(
        default="no", metadata={"help": "autocast on GPU only (ignored on CPU)", "choices": ("no", "fp16", "bf16")}
    )
    eval_batch_size: int | None = field(default=None, metadata={"help": "validation batch size", "cli": False})
    progress: bool = field(default=True, metadata={"help": "progress bars (main process, terminal only)"})

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
        if self.min_lr > self.lr:
            raise ConfigError(
                f"min_lr {self.min_lr!r} is above lr {self.lr!r}", "lower --min-lr: the schedule decays to it"
            )
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
    config_defaults: dict | None = None,
    resume: bool = False,
    force: bool = False,
    callbacks: Sequence[Callback] = (),
    log: Callable[[str], None] | None = say,
) -> dict:
    """Train ``objective`` and return ``{"history": [per-epoch records], "final": ..., "best_top1": ...}``.

    ``output_dir`` receives ``checkpoints/last.pt`` (+ ``best.pt``), ``metrics.jsonl`` (one JSON
    record per epoch) and ``tensorboard/`` when TensorBoard is installed. ``run_config`` (JSON-able)
    is stored in checkpoints; ``resume=True`` continues from ``checkpoints/last.pt`` (if there is
    one) and refuses a different ``run_config`` unless ``force``. ``config_defaults`` gives the
    values of keys that a checkpoint written before they existed lacks.
    """
    cfg = config.check()
    run_config = json.loads(json.dumps(run_config or {}, default=str))
    if len(train_set) == 0 or len(val_set) == 0:
        raise ConfigError("the training and validation sets must not be empty")
    loop = Loop(objective, train_set, val_set, cfg, Path(output_dir), run_config, callbacks, log)
    state = loop.resume(force, config_defaults) if resume else None
    loop.prepare(state)
    return loop.run()


@dataclass
class Position:
    """Where a run stands: saved in every checkpoint, restored on resume."""

    epoch: int = 0  # the epoch being trained (0-based)
    skip: int = 0  # batches of that epoch already trained on
    step: int = 0  # optimizer steps done
    best: float = -1.0  # best validation top-1 so far
    history: list = field(default_factory=list)  # per-epoch records
    sums: dict = field(default_factory=dict)  # this epoch's loss-term sums, weighted by batch size
    seen: int = 0  # this epoch's images (this process)
    elapsed: float = 0.0  # this epoch's training time (s)

    def reset_epoch(self) -> None:
        self.skip, self.sums, self.seen, self.elapsed = 0, {}, 0, 0.0


class Loop:
    """One :func:`fit` run, in parts: setup (the constructor), :meth:`resume`, :meth:`prepare`, then
    :meth:`run`, which for every epoch runs :meth:`step` per batch and :meth:`end_epoch`."""

    def __init__(self, objective, train_set, val_set, cfg: TrainConfig, out: Path, run_config: dict, callbacks, log):
        self.cfg, self.out, self.ckpt_dir = cfg, out, out / "checkpoints"
        self.run_config, self.callbacks, self.pos = run_config, list(callbacks), Position()
        self.loader_kwargs = dict(num_workers=cfg.num_workers, collate_fn=_collate, generator=torch.Generator())
        self.objective = objective
        self._accelerate(objective, train_set, log)
        self._data(objective, train_set, val_set)
        self.optimizer = torch.optim.AdamW(param_groups(objective, cfg.weight_decay), lr=cfg.lr)
        steps_per_epoch = math.ceil(self.batches / cfg.grad_accum)
        self.scheduler = cosine_schedule(
            self.optimizer,
            cfg.epochs * steps_per_epoch,
            round(cfg.warmup_epochs * steps_per_epoch),
            cfg.min_lr / cfg.lr,
        )

    def _accelerate(self, objective, train_set, log) -> None:
        """Processes, devices, precision; DDP is told about parameters a probe step finds without gradients."""
        proc = processes()
        self.world = proc.num_processes
        mixed = self.cfg.mixed_precision
        if mixed != "no" and not torch.cuda.is_available():
            warnings.warn(f"mixed precision {mixed} needs a GPU; training in float32 on CPU", stacklevel=4)
            mixed = "no"
        self.precision = mixed
        unused = []
        if self.world > 1:
            probe = DataLoader(
                SeededBatches(train_set), batch_sampler=[[0, min(1, len(train_set) - 1)]], **self.loader_kwargs
            )
            objective.to(proc.device)
            unused = _unused_parameters(objective, [t.to(proc.device) for t in next(iter(probe))])
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=bool(unused))] if self.world > 1 else []
        self.accelerator = Accelerator(
            mixed_precision=mixed, cpu=not torch.cuda.is_available(), kwargs_handlers=handlers
        )
        acc = self.accelerator
        self.rank, self.device, self.main = acc.process_index, acc.device, acc.is_main_process
        self.note = log if (log is not None and self.main) else (lambda _msg: None)
        if unused:
            self.note(f"note: {len(unused)} parameters get no gradient (e.g. {unused[0]}); DDP finds unused parameters")

    def _data(self, objective, train_set, val_set) -> None:
        """Loaders whose order and augmentation depend on (seed, epoch, step, rank) only."""
        cfg, world, rank = self.cfg, self.world, self.rank
        self.mixup_fn = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(
                mixup_alpha=cfg.mixup,
                cutmix_alpha=cfg.cutmix,
                label_smoothing=cfg.label_smoothing,
                num_classes=getattr(objective.model, "num_classes", None),
            )
        drop_last = self.mixup_fn is not None
        self.sampler = EpochBatchSampler(len(train_set), cfg.batch_size, cfg.seed, rank, world, drop_last=drop_last)
        if len(self.sampler) == 0:
            raise ConfigError(f"batch size {cfg.batch_size} is larger than the training set ({len(train_set)} samples)")
        self.loader = DataLoader(SeededBatches(train_set), batch_sampler=self.sampler, **self.loader_kwargs)
        self.val_loader = DataLoader(
            Subset(val_set, range(rank, len(val_set), world)),
            batch_size=cfg.eval_batch_size or cfg.batch_size,
            **self.loader_kwargs,
        )
        self.batches = len(self.sampler)

    # ------------------------------------------------------------------ resume

    def resume(self, force: bool, defaults: dict | None = None) -> dict | None:
        """Load ``last.pt`` (if any) into the objective and the position; the state, or ``None``."""
        path = self.ckpt_dir / LAST
        if not path.is_file():
            return None
        state = load_checkpoint(path)
        saved = {**json.loads(json.dumps(defaults or {}, default=str)), **state.get("config", {})}
        diff = config_diff(saved, self.run_config)
        if diff and not force:
            raise ConfigError(
                f"{path} was made with a different configuration ({'; '.join(diff)})",
                "resume with the same options, or pass --force to continue anyway",
            )
        try:
            self.objective.load_state_dict(state["objective"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint does not fit the model: {first}", "resume with the same model") from None
        self.pos = Position(
            state["epoch"], state["batches_done"], state["step"], state["best_top1"], state["history"],
            state["epoch_sums"], state["epoch_images"], state["epoch_time"],
        )  # fmt: skip
        if state["world_size"] != self.world:
            if not force:
                raise ConfigError(
                    f"checkpoint was written by {state['world_size']} processes, this run has {self.world}",
                    "resume with the same number of processes, or pass --force",
                )
            self.pos.skip = self.pos.skip * state["world_size"] // self.world
        return state

    def prepare(self, state: dict | None) -> None:
        """Wrap for the processes; restore optimizer, scheduler, scaler and RNGs from ``state``, or seed."""
        acc = self.accelerator
        self.objective, self.optimizer = acc.prepare(self.objective, self.optimizer)
        self.core = acc.unwrap_model(self.objective)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if acc.scaler is not None and state.get("scaler") is not None:
                acc.scaler.load_state_dict(state["scaler"])
            p = self.pos
            self.note(f"resumed from {self.ckpt_dir / LAST}: epoch {p.epoch + 1}, batch {p.skip}, step {p.step}")
        if state is not None and state["world_size"] == self.world:
            set_rng_state(state["rng"][self.rank])
        else:
            seed = self.cfg.seed + self.rank
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)

    def checkpoint(self, epoch: int, batches_done: int, is_best: bool = False) -> None:
        """Every process's RNG states plus the main process's full state, written atomically."""
        acc, p = self.accelerator, self.pos
        rngs = gather_object([rng_state()]) if self.world > 1 else [rng_state()]
        error = None
        if self.main:
            payload = {
                "objective": self.core.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                "epoch": epoch,
                "batches_done": batches_done,
                "step": p.step,
                "world_size": self.world,
                "best_top1": p.best,
                "history": p.history,
                "epoch_sums": p.sums,
                "epoch_images": p.seen,
                "epoch_time": p.elapsed,
                "config": self.run_config,
                "rng": rngs,
            }
            try:
                save_checkpoint(self.ckpt_dir, payload, best=is_best)
            except CheckpointError as e:
                error = e
        failed = error is not None
        if self.world > 1:
            failed = acc.reduce(torch.tensor(float(failed), device=self.device), "sum").item() > 0
        if failed:
            raise error or CheckpointError("the main process could not write its checkpoint")

    # ------------------------------------------------------------------ training

    def run(self) -> dict:
        writer = _tensorboard(self.out / "tensorboard") if self.main else None
        try:
            for epoch in range(self.pos.epoch, self.cfg.epochs):
                self.train_epoch(epoch)
                self.end_epoch(epoch, writer)
        finally:
            if writer is not None:
                writer.close()
        history = self.pos.history
        return {
            "history": history,
            "final": history[-1] if history else None,
            "best_top1": self.pos.best,
            "world_size": self.world,
            "device": _device_name(self.device),
            "mixed_precision": self.precision,
        }

    def train_epoch(self, epoch: int) -> None:
        p, cfg = self.pos, self.cfg
        self.sampler.set_epoch(epoch, p.skip)
        self.objective.train()
        self.bar = tqdm(
            total=self.batches,
            initial=p.skip,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            dynamic_ncols=True,
            disable=None if (self.main and cfg.progress) else True,  # None: only on a terminal
        )
        self.tick = time.perf_counter()
        for i, batch in enumerate(self.loader, start=p.skip):
            if self.step(epoch, i, batch) and cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0:
                if i + 1 < self.batches:
                    self.checkpoint(epoch, i + 1)
                    self.tick = time.perf_counter()  # checkpoint writing is not training time
        self.bar.close()

    def step(self, epoch: int, i: int, batch) -> bool:
        """Forward and backward of batch ``i``; an optimizer step when it ends a ``grad_accum`` group
        (then ``True``)."""
        acc, cfg, p = self.accelerator, self.cfg, self.pos
        batch = [t.to(self.device, non_blocking=True) for t in batch]
        if self.mixup_fn is not None:
            batch[0], batch[1] = self.mixup_fn(batch[0], batch[1])
        group_start = i - i % cfg.grad_accum
        group = min(cfg.grad_accum, self.batches - group_start)
        sync = i + 1 == group_start + group
        with contextlib.nullcontext() if sync else acc.no_sync(self.objective):
            with acc.autocast():
                terms = self.objective(batch)
            self._check_finite(terms, epoch)
            acc.backward(terms["loss"] / group)
        values = {k: float(v.detach()) for k, v in terms.items()}
        for k, v in values.items():
            p.sums[k] = p.sums.get(k, 0.0) + v * len(batch[0])
        p.seen += len(batch[0])
        self.bar.update(1)
        if not sync:
            return False
        if cfg.clip_grad is not None:
            acc.clip_grad_norm_(self.objective.parameters(), cfg.clip_grad)
        lr = self.optimizer.param_groups[0]["lr"]
        for callback in self.callbacks:
            callback(StepContext(epoch, p.step, values, lr, self.core.model, self.core, self.optimizer, acc))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        p.step += 1
        now = time.perf_counter()
        p.elapsed, self.tick = p.elapsed + now - self.tick, now
        speed = f"{p.seen * self.world / max(p.elapsed, 1e-9):.0f}"
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()} | {"img/s": speed}, refresh=False)
        return True

    def _check_finite(self, terms: dict, epoch: int) -> None:
        bad = ~torch.isfinite(terms["loss"].detach())
        if self.world > 1:
            bad = self.accelerator.reduce(bad.float(), "sum") > 0
        if bad:
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            raise TrainingError(
                f"loss is not finite at epoch {epoch + 1}, step {self.pos.step + 1} ({values}); training stopped, "
                f"the last good checkpoint is kept in {self.ckpt_dir}",
                "lower --lr or set --clip-grad",
            )

    def end_epoch(self, epoch: int, writer) -> None:
        """Evaluate, record, checkpoint, write ``metrics.jsonl`` and log the epoch's line."""
        p, acc = self.pos, self.accelerator
        eval_sums = _eval_sums(self.core.model, self.val_loader, None, self.device, acc.autocast)
        if self.world > 1:
            eval_sums = acc.reduce(eval_sums, "sum")
        val = _eval_metrics(eval_sums)
        record = {
            "epoch": epoch + 1,
            "step": p.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v / max(p.seen, 1) for k, v in p.sums.items()},
            **{f"val_{k}": v for k, v in val.items()},
            "img_per_s": p.seen * self.world / max(p.elapsed, 1e-9),
            "epoch_time_s": p.elapsed,
        }
        p.history.append(record)
        is_best = val["top1"] > p.best
        p.best = max(p.best, val["top1"])
        p.reset_epoch()
        self.checkpoint(epoch + 1, 0, is_best)
        if self.main:
            lines = "".join(json.dumps(r) + "\n" for r in p.history)
            atomic_write(self.out / "metrics.jsonl", lambda f: f.write(lines.encode()))
            if writer is not None:
                for k, v in record.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
                writer.flush()
        terms_text = " ".join(f"{k[6:]} {v:.4f}" for k, v in record.items() if k.startswith("train_"))
        self.note(
            f"epoch {epoch + 1}/{self.cfg.epochs}  {terms_text}  val top-1 {val['top1']:.2f} top-5 {val['top5']:.2f}"
            f"  {record['img_per_s']:.0f} img/s  {record['epoch_time_s']:.1f} s"
        )
