"""What the ``minivit`` commands do, as plain Python functions (the CLI only parses arguments).

* :func:`run_train`: train a model from scratch (a teacher or a baseline).
* :func:`run_compress`: multiplex a teacher into a student and distil it.
* :func:`run_eval`: accuracy, size and latency of a saved model.

A run's output folder holds ``model.safetensors`` + ``config.json`` (:func:`minivit.save_pretrained`),
``metrics.jsonl``, ``checkpoints/`` and ``report.json``. Every input is checked before the folder
is created, so a mistake leaves nothing behind.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..distill.config import DistillConfig, as_distill_config
from ..errors import CheckpointError, ConfigError, MinivitError
from ..io import build_from_config, from_pretrained, locks_output, model_config, save_pretrained
from ..io.limits import build_named, check_finite
from ..measure import count_parameters, latency_ms, size_mb
from ..spec import MultiplexSpec, as_spec
from ..train.data import WithTeacherLogits
from ..train.engine import TrainConfig, evaluate, fit, processes, say
from ..train.state import LAST, atomic_write, load_checkpoint

RUN_MARKERS = ("checkpoints", "report.json", "model.safetensors", "metrics.jsonl")
# options that change how a run is executed, not what it computes: free to change on --resume
_EXECUTION_ONLY = ("num_workers", "checkpoint_every", "progress", "eval_batch_size")


@dataclass
class RunOptions:
    """What a ``train`` or ``compress`` run takes besides its configs: which data, and how the output
    folder and the loop are handled."""

    augment: bool = False  # light augmentation of the training images
    train_limit: int | None = None  # at most this many training images (class-balanced)
    val_limit: int | None = None  # at most this many validation images
    resume: bool = False  # continue the run in the output folder
    force: bool = False  # resume despite a changed configuration, or overwrite a run
    callbacks: Sequence = ()  # per-step callbacks of the loop
    log: Callable[[str], None] | None = say

    def record(self) -> dict:
        """The options that define a run's result (for its recorded configuration)."""
        return {"augment": self.augment, "train_limit": self.train_limit, "val_limit": self.val_limit}


def run_options(run: RunOptions | None, options: dict) -> RunOptions:
    """``run`` (or the defaults) with the ``options`` named like its fields taken out of ``options``."""
    names = [f.name for f in fields(RunOptions)]
    changes = {k: options.pop(k) for k in names if k in options}
    return dataclasses.replace(run or RunOptions(), **changes)


# --------------------------------------------------------------------------- parsing helpers


def parse_value(text: str):
    """``"32"`` -> 32, ``"0.1"`` -> 0.1, ``"true"`` -> True, ``"[1,2]"``/``"(1,2)"``/``"1,2"`` -> tuple, else str."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return tuple(value) if isinstance(value, list) else value


def parse_model_args(items, option: str = "--model-args") -> dict:
    """``["img_size=32", "depth=4"]`` -> ``{"img_size": 32, "depth": 4}``; a key given twice, an empty value
    or an unclosed bracket is refused naming ``option``."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"bad {option} item {item!r}", "write key=value, e.g. depth=4 embed_dim=64")
        if key in out:
            raise ConfigError(f"{option} gives {key} twice ({key}={value})", f"keep one {key}=...")
        if not value.strip():
            raise ConfigError(f"{option} {key}= has no value", f"write {key}=<value>, e.g. depth=4")
        parsed = parse_value(value)
        if isinstance(parsed, str) and (value.strip()[:1] in "([{" or value.strip()[-1:] in ")]}"):
            raise ConfigError(f"{option} {key}={value} is not a valid value", f"write e.g. {key}=32 or {key}=32,32")
        out[key] = parsed
    return out


# --------------------------------------------------------------------------- models and data


def load_model(spec: str, model_args: dict | None = None, pretrained: bool = False) -> nn.Module:
    """A model from a saved folder, a training checkpoint (``.pt``), a ``.safetensors`` file or a model name."""
    path = Path(spec).expanduser()
    if path.is_dir():
        _no_args(model_args, spec)
        return from_pretrained(path)
    if path.is_file():
        _no_args(model_args, spec)
        if path.suffix == ".safetensors":
            return from_pretrained(path.parent)
        state = load_checkpoint(path)
        arch = state.get("config", {}).get("architecture")
        if not isinstance(arch, dict):
            raise CheckpointError(f"{path} does not say which architecture it holds", "pass the run's output folder")
        model = build_from_config(arch)
        weights = {k[6:]: v for k, v in state["objective"].items() if k.startswith("model.")}
        from ..io import load_state_dict_checked

        return load_state_dict_checked(model, weights, source=str(path)).eval()
    if os.sep in spec or spec.endswith((".pt", ".safetensors", ".json")):
        raise CheckpointError(
            f"model path not found: {spec}", "pass a saved model folder, a checkpoint or a model name"
        )
    try:
        return build_named(spec, dict(model_args or {}), "--teacher-args", pretrained=pretrained)
    except MinivitError:
        raise
    except Exception as e:  # downloads: no network, missing weights
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            f"cannot load pretrained weights for {spec!r}: {type(e).__name__}: {why}",
            "pass a local model folder (minivit train --output DIR) instead",
        ) from None


def _no_args(model_args, spec):
    if model_args:
        raise ConfigError(f"--teacher-args cannot change the saved model {spec}", "drop --teacher-args")


def input_spec(model: nn.Module) -> tuple[tuple[int, int], int]:
    """``((height, width), in_chans)`` the model expects."""
    pe = getattr(model, "patch_embed", None)
    if pe is not None and getattr(pe, "img_size", None) is not None:
        return tuple(pe.img_size), pe.proj.in_channels
    size = getattr(model, "pretrained_cfg", {}).get("input_size")
    if size:
        return tuple(size[1:]), size[0]
    raise ConfigError(f"cannot tell the input size of {type(model).__name__}", "use a ViT/DeiT/Swin model")


def native_channels(data: str) -> int:
    """Default input channels: 1 for the built-in grey datasets, 3 for image folders."""
    from ..data import BUILTIN_DATASETS, fashion_mnist

    key = str(data).strip().lower().replace("_", "-")
    if os.sep not in str(data) and key in (*BUILTIN_DATASETS, "fmnist", "fashionmnist"):
        return 1
    return 1 if Path(data).is_dir() and fashion_mnist.has_fashion_mnist(Path(data)) else 3


def load_data(data: str, img_size, in_chans: int, augment: bool = False, train_limit=None, val_limit=None):
    from ..data import build_dataset

    train = build_dataset(data, "train", img_size, in_chans, train_augment=augment, limit=train_limit)
    val = build_dataset(data, "val", img_size, in_chans, limit=val_limit)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"dataset {data!r} has an empty {'train' if len(train) == 0 else 'val'} split")
    return train, val


def check_classes(model: nn.Module, train, what: str = "model") -> None:
    n = getattr(model, "num_classes", None)
    if n == 0:
        raise ConfigError(
            f"the {what} has no classifier head (num_classes=0)",
            "drop num_classes from the arguments: it comes from the data" if what == "model" else "use a classifier",
        )
    if n is not None and n != train.num_classes:
        raise ConfigError(
            f"the {what} has {n} classes but the data has {train.num_classes}",
            f"train a {what} on this data first (minivit train), or pick data with {n} classes",
        )


# --------------------------------------------------------------------------- output folders


def check_output(output, resume: bool, force: bool) -> Path:
    """Validate ``output`` without creating it: writable, and not an existing run unless resuming/forcing."""
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file", "choose a folder")
    existing = [m for m in RUN_MARKERS if (out / m).exists()]
    if existing and not (resume or force):
        raise ConfigError(
            f"--output {out} already holds a run ({', '.join(existing)})",
            "pass --resume to continue it, --force to overwrite it, or choose another folder",
        )
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {probe}", "choose a writable --output folder")
    return out


def export_folder(model_dir, fmt: str, output=None, int8: bool = False, force: bool = False) -> Path:
    """The folder ``minivit export`` writes into; another model's or run's folder is refused unless ``force``."""
    from ..export import default_output

    out = Path(output).expanduser() if output else default_output(model_dir, fmt, int8)
    folder = out if fmt == "safetensors" or out.is_dir() else out.parent
    existing = [m for m in RUN_MARKERS if (folder / m).exists()]
    if existing and not force and folder.resolve() != Path(model_dir).expanduser().resolve():
        raise ConfigError(
            f"--output {folder} holds another model or run ({', '.join(existing)})",
            "choose another --output, or pass --force to write into it",
        )
    return folder


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def describe(model: nn.Module, img_size, in_chans: int) -> dict:
    return {
        "params": count_parameters(model),
        "size_mb": round(size_mb(model), 3),
        "latency_ms": round(latency_ms(model, (1, in_chans, *img_size)), 3),
    }


def run_config(config: TrainConfig, **values) -> dict:
    """What defines a run's result (compared on --resume): ``values`` plus the training options."""
    train = {k: v for k, v in vars(config).items() if k not in _EXECUTION_ONLY}
    return json.loads(json.dumps({**values, **train}, default=str))


def compress_defaults() -> dict:
    """The recorded values of the default configs: what a run folder written before an option existed
    is taken to have used (so resuming it still works, and a changed option is still noticed)."""
    return run_config(TrainConfig(), **MultiplexSpec().to_dict(), **DistillConfig().record())


def _loop_options(run: RunOptions) -> dict:
    return dict(resume=run.resume, force=run.force, callbacks=run.callbacks, log=run.log)


def _label_smoothing(config: TrainConfig) -> float:
    return 0.0 if (config.mixup or config.cutmix) else config.label_smoothing  # Mixup smooths its own targets


def _finish(model, out: Path, result: dict, report: dict, img_size, in_chans, main: bool) -> dict:
    final = result["final"]
    report.update(
        model=describe(model, img_size, in_chans) if main else {},
        val={"top1": final["val_top1"], "top5": final["val_top5"], "loss": final["val_loss"]},
        best_top1=result["best_top1"],
        epochs=final["epoch"],
        train_time_s=round(sum(r["epoch_time_s"] for r in result["history"]), 2),
    )
    if main:
        save_pretrained(model, out)
        write_json(out / "report.json", report)
    return report


# --------------------------------------------------------------------------- commands


@locks_output("minivit train")
def run_train(
    model: str,
    data: str,
    output,
    config: TrainConfig,
    model_args: dict | None = None,
    run: RunOptions | None = None,
    **options,
) -> dict:
    """Train ``model`` (a name plus ``model_args``) from scratch on ``data``; returns the report.

    ``options`` override fields of ``run`` (``resume=True``, ``train_limit=1000``, ...)."""
    run = run_options(run, options)
    if options:
        raise TypeError(f"run_train() got unexpected keyword argument(s) {', '.join(sorted(options))}")
    config.check()
    args = dict(model_args or {})
    in_chans = args.setdefault("in_chans", native_channels(data))
    torch.manual_seed(config.seed)
    net = _build_named(model, args)
    img_size, in_chans = input_spec(net)
    train, val = load_data(data, img_size, in_chans, run.augment, run.train_limit, run.val_limit)
    if "num_classes" not in args:
        args["num_classes"] = train.num_classes
        torch.manual_seed(config.seed)
        net = _build_named(model, args)
    check_classes(net, train)
    out = check_output(output, run.resume, run.force)

    from ..distill.objective import SupervisedObjective

    objective = SupervisedObjective(net, label_smoothing=_label_smoothing(config))
    rc = run_config(
        config,
        command="train",
        model=model,
        model_args=args,
        architecture=model_config(net),
        data=str(data),
        **run.record(),
    )
    result = fit(objective, train, val, config, out, run_config=rc, **_loop_options(run))
    report = {"command": "train", "model_name": model, "data": str(data), "classes": train.classes, "config": rc}
    return _finish(net, out, result, report, img_size, in_chans, processes().is_main_process)


def _build_named(name: str, args: dict) -> nn.Module:
    path = Path(name).expanduser()
    if path.exists():
        raise ConfigError(f"--model {name} is a path", "minivit train takes a model name; to fine-tune, use compress")
    return build_named(name, args)


def compress_configs(spec=None, distill=None, **options) -> tuple[MultiplexSpec, DistillConfig]:
    """The multiplexing and distillation configs of :func:`run_compress`, with keyword overrides.

    ``options`` named like a field of either config override it; the keywords of earlier versions
    work too: ``distill`` given as terms (``("logits",)``) and ``cache_logits``.
    """
    if distill is not None and not isinstance(distill, (DistillConfig, dict)):
        options["distill"], distill = distill, None
    if "cache_logits" in options:
        options["cache_teacher_logits"] = options.pop("cache_logits")
    names = set(MultiplexSpec.field_names())
    spec = as_spec(spec, **{k: v for k, v in options.items() if k in names})
    return spec, as_distill_config(distill, **{k: v for k, v in options.items() if k not in names})


@locks_output("minivit compress")
def run_compress(
    teacher: str,
    data: str,
    output,
    config: TrainConfig | None = None,
    *,
    spec: MultiplexSpec | None = None,
    distill: DistillConfig | None = None,
    teacher_args: dict | None = None,
    run: RunOptions | None = None,
    **options,
) -> dict:
    """Multiplex ``teacher`` as ``spec`` says (``share="all"``: one shared block), distil it as ``distill``
    says, train as ``config`` says; returns the report. ``options`` override fields of ``run``, ``spec``
    and ``distill`` (``resume=True``, ``share=4``, ``beta=0``; see :func:`compress_configs`)."""
    from ..distill.cache import check_cacheable
    from ..distill.objective import DistillationObjective
    from ..multiplex import multiplex

    config = (config or TrainConfig()).check()
    run = run_options(run, options)
    spec, distill = compress_configs(spec, distill, **options)
    check_cacheable(distill, augmented=bool(run.augment or config.mixup or config.cutmix))
    net = check_finite(load_model(teacher, teacher_args, pretrained=True), f"teacher {teacher}").eval()
    img_size, in_chans = input_spec(net)
    train, val = load_data(data, img_size, in_chans, run.augment, run.train_limit, run.val_limit)
    check_classes(net, train, "teacher")
    torch.manual_seed(config.seed)
    student = multiplex(net, spec)
    objective = DistillationObjective(student, net, distill, label_smoothing=_label_smoothing(config))
    out = check_output(output, run.resume, run.force)
    rc = run_config(
        config,
        command="compress",
        teacher=str(teacher),
        architecture=model_config(student),
        data=str(data),
        **spec.to_dict(),
        **distill.record(),
        layer_pairs=objective.pairs,
        **run.record(),
    )
    main = processes().is_main_process
    t0 = time.perf_counter()
    info = _teacher_info(net, str(teacher), val, config, (img_size, in_chans), main)
    if main and run.log is not None:
        run.log(
            f"teacher: {info['params']:,} params, val top-1 {info['top1']:.2f}; "
            f"student (share {spec.share}): {count_parameters(student):,} params, "
            f"{len(objective.pairs)} layer pair(s) {objective.pairs}"
        )
    train_set = _with_cached_logits(net, train, rc, out, main) if distill.cache_teacher_logits else train
    try:
        loop = dict(run_config=rc, config_defaults=compress_defaults(), **_loop_options(run))
        result = fit(objective, train_set, val, config, out, **loop)
    finally:
        objective.remove_hooks()
    report = {"command": "compress", "data": str(data), "classes": train.classes, "config": rc, "teacher": info}
    report = _finish(student, out, result, report, img_size, in_chans, main)
    if main:
        report["compression"] = {
            "params_ratio": round(info["params"] / report["model"]["params"], 3),
            "top1_drop": round(info["top1"] - report["val"]["top1"], 3),
        }
        report["setup_time_s"] = round(time.perf_counter() - t0 - report["train_time_s"], 2)
        write_json(out / "report.json", report)
    return report


def _teacher_info(net: nn.Module, source: str, val, config: TrainConfig, input_shape, main: bool) -> dict:
    """The teacher's source, depth and (main process) size, latency and validation accuracy."""
    from ..distill.hooks import num_layers

    info = {"source": source, "depth": num_layers(net)}
    if main:
        info.update(describe(net, *input_shape))
        info.update(evaluate(net, val, config.eval_batch_size or config.batch_size))
    return info


def _with_cached_logits(net: nn.Module, train, rc: dict, out: Path, main: bool) -> WithTeacherLogits:
    """``train`` with the teacher's logits, computed once (kept in ``checkpoints/teacher_logits.pt``)."""
    from ..distill.cache import cache_teacher_logits

    key = {k: rc[k] for k in ("teacher", "data", "train_limit", "augment")}
    key["teacher_weights"] = float(sum(p.double().sum() for p in net.parameters()))
    logits = cache_teacher_logits(net, train, out / "checkpoints" / "teacher_logits.pt", key, write=main)
    return WithTeacherLogits(train, logits)


def run_eval(
    model: str, data: str, batch_size: int = 256, val_limit: int | None = None, latency_runs: int = 30
) -> dict:
    """Top-1/top-5 on the validation split, unique parameters, MB and single-image latency."""
    net = check_finite(load_model(model, pretrained=True), str(model)).eval()
    img_size, in_chans = input_spec(net)
    from ..data import build_dataset

    val = build_dataset(data, "val", img_size, in_chans, limit=val_limit)
    if len(val) == 0:
        raise ConfigError(f"dataset {data!r} has an empty val split")
    check_classes(net, val)
    metrics = evaluate(net, val, batch_size)
    return {
        "model": str(model),
        "data": str(data),
        "samples": len(val),
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "loss": metrics["loss"],
        "params": count_parameters(net),
        "size_mb": round(size_mb(net), 3),
        "latency_ms": round(latency_ms(net, (1, in_chans, *img_size), runs=latency_runs), 3),
        "img_size": list(img_size),
        "in_chans": in_chans,
    }


def run_analyze(teacher: str, student: str, data: str, output, batches: int = 10, batch_size: int = 128) -> str:
    """``minivit analyze``: per-layer CKA plots and a size/speed table; returns a short summary."""
    from torch.utils.data import DataLoader

    from ..analysis.compare import analyze

    t = check_finite(load_model(teacher, pretrained=True), str(teacher)).eval()
    s = check_finite(load_model(student, pretrained=True), str(student)).eval()
    (img_t, ch_t), (img_s, ch_s) = input_spec(t), input_spec(s)
    if (img_t, ch_t) != (img_s, ch_s):
        raise ConfigError(
            f"teacher input {ch_t}x{img_t} differs from student input {ch_s}x{img_s}",
            "compare models that take the same images",
        )
    from ..data import build_dataset

    val = build_dataset(data, "val", img_t, ch_t, limit=batches * batch_size)
    loader = DataLoader(val, batch_size=batch_size)
    shape = (1, ch_t, *img_t)
    summary = analyze(t, s, loader, output, shape, max_batches=batches, names=("teacher", "student"))
    rows = summary["table"]
    cka = summary["cka_per_layer"]
    return (
        f"wrote {Path(output) / 'analysis.md'}: student {rows[1]['params']:,} params "
        f"(x{rows[1]['params_ratio']:.3f} of the teacher), latency x{rows[1]['latency_ratio']:.2f}, "
        f"CKA per layer {min(cka):.3f}..{max(cka):.3f} (last {cka[-1]:.3f})"
    )


__all__ = [
    "LAST",
    "RunOptions",
    "compress_configs",
    "compress_defaults",
    "load_model",
    "parse_model_args",
    "parse_value",
    "run_compress",
    "run_eval",
    "run_train",
]
