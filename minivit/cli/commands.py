"""What the ``minivit`` commands do, as plain Python functions (the CLI only parses arguments).

* :func:`run_train`: train a model from scratch, or fine-tune pretrained weights (a teacher or a baseline).
* :func:`run_compress`: multiplex a teacher into a student and distil it.
* :func:`run_eval`: accuracy, size and latency of a saved model (and, optionally, its predictions).

Preprocessing comes from the model, as in timm: a pretrained model, a teacher and every saved model
take their own data config (:func:`~minivit.data.resolve_data_config`); a model trained from scratch
takes the natural statistics of its data (:func:`~minivit.data.default_data_config`). A student
inherits its teacher's, and every saved model records the one it was trained with.

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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..core.delta import fold_deltas
from ..data import AugmentConfig, DataConfig, apply_data_config, resolve_data_config
from ..distill.config import DistillConfig, as_distill_config
from ..errors import CheckpointError, ConfigError, MinivitError
from ..io import (
    atomic_write,
    build_from_config,
    check_float_model,
    from_pretrained,
    locks_output,
    model_config,
    read_config,
    save_pretrained,
)
from ..io.limits import build_named, check_finite
from ..measure import count_parameters, infer_input_size, latency_ms, size_mb
from ..spec import MultiplexSpec, as_spec
from ..train.data import WithTeacherLogits
from ..train.engine import TrainConfig, evaluate, fit, processes, say
from ..train.state import LAST, load_checkpoint
from .sources import load_user_weights, saved_data_config

RUN_MARKERS = ("checkpoints", "report.json", "model.safetensors", "metrics.jsonl")
# options that change how a run is executed, not what it computes: free to change on --resume
_EXECUTION_ONLY = ("num_workers", "checkpoint_every", "progress", "eval_batch_size")


@dataclass
class RunOptions:
    """What a ``train`` or ``compress`` run takes besides its configs: which data, and how the output
    folder and the loop are handled."""

    augment: bool = False  # augment the training images (timm's train transform for folders)
    train_limit: int | None = None  # at most this many training images (class-balanced)
    val_limit: int | None = None  # at most this many validation images
    resume: bool = False  # continue the run in the output folder
    force: bool = False  # resume despite a changed configuration, or overwrite a run
    callbacks: Sequence = ()  # per-step callbacks of the loop
    log: Callable[[str], None] | None = say
    augmentation: AugmentConfig | None = None  # what ``augment`` does (None: timm's defaults)

    def train_augment(self) -> AugmentConfig | None:
        """The training augmentation, or None when ``augment`` is off."""
        return (self.augmentation or AugmentConfig()) if self.augment else None

    def record(self) -> dict:
        """The options that define a run's result (for its recorded configuration)."""
        aug = self.train_augment()
        return {
            "augment": self.augment,
            "augmentation": aug.to_dict() if aug is not None else None,
            "train_limit": self.train_limit,
            "val_limit": self.val_limit,
        }


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


def load_model(
    spec: str, model_args: dict | None = None, pretrained: bool = False, use: str | None = None
) -> nn.Module:
    """A model from a saved folder, a training checkpoint (``.pt``), a ``.safetensors`` file or a model name.

    A saved model gets the data config it records (:func:`~minivit.cli.sources.saved_data_config`); a
    model name gets timm's data config (and, with ``pretrained``, timm's pretrained weights). An int8 folder
    (``export --format safetensors --int8``) gives its int8 model; ``use`` (e.g. "a teacher") says the
    caller needs an fp32 one, and an int8 folder is then refused with one line."""
    path = Path(spec).expanduser()
    if path.is_dir():
        _no_args(model_args, spec)
        net = from_pretrained(path)
        if use is not None:
            check_float_model(net, spec, use)
        return apply_data_config(net, saved_data_config(net, read_config(path)))
    if path.is_file():
        _no_args(model_args, spec)
        if path.suffix == ".safetensors":
            return load_model(str(path.parent), use=use)
        return _from_training_checkpoint(path)
    if os.sep in spec or spec.endswith((".pt", ".safetensors", ".json")):
        raise CheckpointError(
            f"model path not found: {spec}", "pass a saved model folder, a checkpoint or a model name"
        )
    return named_model(spec, model_args or {}, pretrained=pretrained, flag="--teacher-args")


def _from_training_checkpoint(path: Path) -> nn.Module:
    state = load_checkpoint(path)
    arch = state.get("config", {}).get("architecture")
    if not isinstance(arch, dict):
        raise CheckpointError(f"{path} does not say which architecture it holds", "pass the run's output folder")
    model = build_from_config(arch)
    weights = {k[6:]: v for k, v in state["objective"].items() if k.startswith("model.")}
    from ..io import load_state_dict_checked

    load_state_dict_checked(model, weights, source=str(path)).eval()
    return apply_data_config(model, saved_data_config(model, state.get("config")))


def named_model(name: str, args: dict, pretrained: bool = False, flag: str = "--model-args") -> nn.Module:
    """``create_model(name, pretrained=..., **args)`` with one clear line when the weights cannot be had."""
    try:
        return build_named(name, dict(args or {}), flag, pretrained=pretrained)
    except MinivitError:
        raise
    except Exception as e:  # downloads: no network, missing weights
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            f"cannot load pretrained weights for {name!r}: {type(e).__name__}: {why}",
            "pass your own weights file (--checkpoint / --teacher-checkpoint) or a local model folder",
        ) from None


def _no_args(model_args, spec):
    if model_args:
        raise ConfigError(f"--teacher-args cannot change the saved model {spec}", "drop --teacher-args")


def native_channels(data: str) -> int:
    """Default input channels: 1 for the built-in grey datasets, 3 for image folders."""
    from ..data import dataset_kind

    return 3 if dataset_kind(data) == "folder" else 1


def training_data_config(net: nn.Module, data: str, pretrained: bool) -> DataConfig:
    """The preprocessing to train ``net`` with: its own (pretrained weights, a teacher) or, from scratch,
    the natural statistics of ``data`` at the model's input size."""
    from ..data import dataset_kind, default_data_config

    if pretrained:
        return resolve_data_config(net)
    return default_data_config(dataset_kind(data), infer_input_size(net)[1:])


def load_data(data: str, data_config: DataConfig, augment: AugmentConfig | None = None, train_limit=None,
              val_limit=None):  # fmt: skip
    """Train and val datasets preprocessed as ``data_config`` says (``augment``: the train split's augmentation)."""
    from ..data import build_dataset

    train = build_dataset(data, "train", data_config=data_config, augment=augment, limit=train_limit)
    val = build_dataset(data, "val", data_config=data_config, limit=val_limit)
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


def describe(model: nn.Module, input_size=None, latency_runs: int = 30, runner: nn.Module | None = None) -> dict:
    """Distinct parameters, MB and single-image latency at ``input_size`` ``(C, H, W)`` (default the model's);
    the latency is ``runner``'s (e.g. the compiled model) when given."""
    shape = (1, *input_size) if input_size is not None else infer_input_size(model)
    return {
        "params": count_parameters(model),
        "size_mb": round(size_mb(model), 3),
        "latency_ms": round(latency_ms(runner if runner is not None else model, shape, runs=latency_runs), 3),
    }


def compiled(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``torch.compile(model)`` (eval mode), tried once on ``example``; a backend that cannot build (no C++
    compiler, an unsupported platform) becomes one line."""
    runner = torch.compile(model.eval())
    try:
        with torch.no_grad():
            runner(example.to(next(model.parameters()).device))
    except Exception as e:  # noqa: BLE001 - dynamo/inductor raise many kinds of errors
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"torch.compile failed: {line[:200]}", "run without --compile") from None
    return runner


def run_config(config: TrainConfig, **values) -> dict:
    """What defines a run's result (compared on --resume): ``values`` plus the training options."""
    train = {k: v for k, v in vars(config).items() if k not in _EXECUTION_ONLY}
    return json.loads(json.dumps({**values, **train}, default=str))


def compress_defaults() -> dict:
    """The recorded values of the default configs: what a run folder written before an option existed
    is taken to have used (so resuming it still works, and a changed option is still noticed)."""
    return run_config(TrainConfig(), **MultiplexSpec().to_dict(), **DistillConfig().record())


def _before_recipes(asked: dict) -> dict:
    """What a compress run folder written before ``--recipe`` existed is taken to have used: the flags as given
    (``exact``), at the share it was asked for; resuming it takes ``--recipe exact``."""
    return {"recipe": "exact", **({"asked_share": asked["asked_share"]} if "asked_share" in asked else {})}


def _loop_options(run: RunOptions, data_config: DataConfig, defaults: dict | None = None) -> dict:
    """The loop's options; a run folder written before data configs were recorded is taken to have used
    the legacy squash (and, with ``--augment``, the default augmentation)."""
    from ..data import legacy_data_config

    legacy = {
        "data_config": legacy_data_config(data_config.img_size, data_config.in_chans).to_json(),
        "augmentation": AugmentConfig().to_dict() if run.augment else None,
    }
    return dict(
        resume=run.resume, force=run.force, callbacks=run.callbacks, log=run.log,
        config_defaults={**(defaults or {}), **legacy},
    )  # fmt: skip


def _label_smoothing(config: TrainConfig) -> float:
    return 0.0 if (config.mixup or config.cutmix) else config.label_smoothing  # Mixup smooths its own targets


def _finish(model, out: Path, result: dict, report: dict, data_config: DataConfig, main: bool) -> dict:
    final = result["final"]
    apply_data_config(model, data_config)
    report.update(
        model=describe(model, data_config.input_size) if main else {},
        val={"top1": final["val_top1"], "top5": final["val_top5"], "loss": final["val_loss"]},
        best_top1=result["best_top1"],
        epochs=final["epoch"],
        train_time_s=round(sum(r["epoch_time_s"] for r in result["history"]), 2),
        hardware={k: result[k] for k in ("device", "world_size", "mixed_precision") if k in result},
    )
    if main:
        save_pretrained(model, out, extra={"data_config": data_config.to_json()})
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
    *,
    pretrained: bool = False,
    checkpoint=None,
    **options,
) -> dict:
    """Train ``model`` (a name plus ``model_args``) on ``data``; returns the report.

    From scratch by default. ``pretrained``: fine-tune timm's pretrained weights; ``checkpoint``: fine-tune
    the weights in this file instead (``.safetensors``, ``.pth``/``.pt``). Either way the head is sized to
    the data's classes and the model's own data config is used. ``options`` override fields of ``run``
    (``resume=True``, ``train_limit=1000``, ...)."""
    run = run_options(run, options)
    if options:
        raise TypeError(f"run_train() got unexpected keyword argument(s) {', '.join(sorted(options))}")
    config.check()
    finetune = pretrained or checkpoint is not None
    args = dict(model_args or {})
    if not finetune:
        args.setdefault("in_chans", native_channels(data))
    torch.manual_seed(config.seed)
    net = _build_named(model, args)
    data_config = training_data_config(net, data, finetune)
    train, val = load_data(data, data_config, run.train_augment(), run.train_limit, run.val_limit)
    if "num_classes" not in args or finetune:
        args.setdefault("num_classes", train.num_classes)
        torch.manual_seed(config.seed)
        net = _build_named(model, args, pretrained=pretrained and checkpoint is None)
        if checkpoint is not None:
            load_user_weights(net, checkpoint, run.log)
    check_classes(net, train)
    out = check_output(output, run.resume, run.force)

    from ..distill.objective import SupervisedObjective

    objective = SupervisedObjective(net, label_smoothing=_label_smoothing(config))
    source = {"pretrained": pretrained, "checkpoint": None if checkpoint is None else str(checkpoint)}
    source = source if finetune else {}
    rc = run_config(
        config, command="train", model=model, model_args=args, architecture=model_config(net), data=str(data),
        data_config=data_config.to_json(), **source, **run.record(),
    )  # fmt: skip
    result = fit(objective, train, val, config, out, run_config=rc, **_loop_options(run, data_config))
    report = {"command": "train", "model_name": model, "data": str(data), "classes": train.classes, "config": rc}
    return _finish(net, out, result, report, data_config, processes().is_main_process)


def _build_named(name: str, args: dict, pretrained: bool = False) -> nn.Module:
    path = Path(name).expanduser()
    if path.exists():
        raise ConfigError(
            f"--model {name} is a path", "minivit train takes a model name (with --checkpoint FILE for your weights)"
        )
    return named_model(name, args, pretrained=pretrained)


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
    teacher_checkpoint=None,
    budget: float | None = None,
    recipe: str | None = None,
    given: Collection[str] | None = None,
    budget_int8: bool = False,
    **options,
) -> dict:
    """Multiplex ``teacher``, distil it as ``distill`` says, train as ``config`` says; returns the report.

    What is built: with ``recipe="frontier"`` (the default, unless ``delta_rank`` or ``init`` is among
    ``options`` or ``given``: then ``"exact"``) the bytes of ``spec.share`` (``"all"``: one shared block) spent
    as the accuracy-per-byte benchmark's winner (:func:`minivit.budget.recipe`: share number, delta rank, init
    and the fields of :data:`minivit.budget.RECIPE`); with ``recipe="exact"``, ``spec`` as given. ``budget`` (a
    fraction of the teacher's stored bytes) replaces the share's bytes as the size (:func:`minivit.budget.plan`);
    ``budget_int8``: the budget holds the student's int8 file (``export --format safetensors --int8``) instead.
    The frontier recipe also distils with :data:`minivit.budget.RECIPE_DISTILL` (hard-label mixing), field by
    field unless the field is among ``options`` or ``given``, or a ``distill`` config is given whole.
    ``given``: the names of the ``spec`` and ``distill`` fields the caller chose (``minivit compress`` passes
    the typed flags among those the recipe sets: ``--alpha``, ``--delta-rank``, ``--init``); the recipe then
    fills in the other fields, even of a whole ``DistillConfig``. ``teacher_checkpoint``: the weights of a
    teacher given by name (else timm's pretrained ones). ``options`` override fields of ``run``, ``spec`` and
    ``distill`` (``resume=True``, ``share=4``, ``beta=0``; see :func:`compress_configs`).

    The teacher is evaluated on the validation split first (``teacher_top1`` in the report), with the
    preprocessing the student inherits from it."""
    from ..distill.cache import check_cacheable
    from ..distill.objective import DistillationObjective
    from ..multiplex import multiplex

    config = (config or TrainConfig()).check()
    if budget_int8 and budget is None:
        raise ConfigError("--budget-int8 counts a --budget: none was given", "add --budget F, e.g. --budget 0.125")
    run = run_options(run, options)
    spec, distill, recipe = _compress_recipe(spec, distill, recipe, budget, options, given)
    check_cacheable(distill, augmented=bool(run.augment or config.mixup or config.cutmix))
    net, data_config, train, val = _teacher_and_data(teacher, teacher_args, teacher_checkpoint, data, run)
    asked = {"recipe": recipe, **({"budget": budget} if budget is not None else {"asked_share": spec.share}),
             **({"budget_int8": True} if budget_int8 else {})}
    spec = _planned(net, spec, budget, recipe, run.log, budget_int8)
    torch.manual_seed(config.seed)
    student = apply_data_config(multiplex(net, spec), data_config)
    objective = DistillationObjective(student, net, distill, label_smoothing=_label_smoothing(config))
    out = check_output(output, run.resume, run.force)
    weights = {} if teacher_checkpoint is None else {"teacher_checkpoint": str(teacher_checkpoint)}
    rc = run_config(
        config, command="compress", teacher=str(teacher), **weights, architecture=model_config(student),
        data=str(data), data_config=data_config.to_json(), **asked, **spec.to_dict(), **distill.record(),
        layer_pairs=objective.pairs, **run.record(),
    )  # fmt: skip
    main = processes().is_main_process
    t0 = time.perf_counter()
    info = _teacher_info(net, str(teacher), val, config, data_config, main)
    if main and run.log is not None:
        run.log(
            f"teacher: {info['params']:,} params, val top-1 {info['top1']:.2f} (before distilling); "
            f"student (share {spec.share}{f', delta rank {spec.delta_rank}' if spec.delta_rank else ''}): "
            f"{count_parameters(student):,} params, "
            f"{len(objective.pairs)} layer pair(s) {objective.pairs}"
        )
    train_set = _with_cached_logits(net, train, rc, out, main) if distill.cache_teacher_logits else train
    try:
        loop = _loop_options(run, data_config, {**compress_defaults(), **_before_recipes(asked)})
        result = fit(objective, train_set, val, config, out, run_config=rc, **loop)
    finally:
        objective.remove_hooks()
    report = {"command": "compress", "data": str(data), "classes": train.classes, "config": rc, "teacher": info}
    report = _finish(student, out, result, report, data_config, main)
    if main:
        _compared(report, info, out, time.perf_counter() - t0, run.log)
    return report


RECIPES = ("frontier", "exact")
LAYOUT_FIELDS = ("delta_rank", "delta_bias", "init")
"""Spec fields the frontier recipe picks itself: giving one (without a budget) builds the spec as given."""


def resolve_recipe(recipe: str | None, budget: float | None, given: set[str]) -> str:
    """The recipe ``compress`` follows: ``recipe``, or when None ``exact`` if a :data:`LAYOUT_FIELDS` field is
    among ``given`` (and no budget picks them), else ``frontier``; the frontier recipe with such a field given
    is refused."""
    layout = [f for f in LAYOUT_FIELDS if f in given] if budget is None else []
    if recipe == "frontier" and layout:
        flags = ", ".join("--" + f.replace("_", "-") for f in layout)
        raise ConfigError(f"{flags}: the frontier recipe picks these itself", "drop them, or pass --recipe exact")
    if recipe is not None and recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}", f"use one of {', '.join(RECIPES)}")
    return recipe or ("exact" if layout else "frontier")


def _compared(report: dict, info: dict, out: Path, seconds: float, log) -> None:
    """Add the teacher's figures and the compression ratios to a compress run's report, rewrite it, show both."""
    report["teacher_top1"] = info["top1"]
    report["compression"] = {
        "params_ratio": round(info["params"] / report["model"]["params"], 3),
        "top1_drop": round(info["top1"] - report["val"]["top1"], 3),
    }
    report["setup_time_s"] = round(seconds - report["train_time_s"], 2)
    write_json(out / "report.json", report)
    if log is not None:
        log("\n" + comparison_table(report))


def _compress_recipe(spec, distill, recipe: str | None, budget: float | None, options: dict, given):
    """:func:`run_compress`'s spec, distillation and recipe: the configs with ``options``, the recipe resolved,
    and its distillation where neither ``options``, ``given`` nor a whole ``DistillConfig`` set those fields."""
    whole = isinstance(distill, DistillConfig) and given is None  # a config given whole is used as it is
    chosen = set(options) | set(given or ())
    distill_keys = set(distill) if isinstance(distill, dict) else set()
    spec, distill = compress_configs(spec, distill, **options)
    recipe = resolve_recipe(recipe, budget, chosen)
    return spec, (distill if whole else recipe_distill(distill, recipe, chosen | distill_keys)), recipe


def recipe_distill(distill: DistillConfig, recipe: str, given: set[str]) -> DistillConfig:
    """``distill`` with the fields of :data:`minivit.budget.RECIPE_DISTILL` that are not in ``given``, for the
    frontier recipe; as it is for ``exact``."""
    from ..budget import RECIPE_DISTILL

    if recipe != "frontier":
        return distill
    return dataclasses.replace(distill, **{k: v for k, v in RECIPE_DISTILL.items() if k not in given})


def _planned(net: nn.Module, spec: MultiplexSpec, budget: float | None, recipe: str, log,
             int8: bool = False) -> MultiplexSpec:
    """The spec ``compress`` builds (see :func:`run_compress`); says what it picked and why."""
    from ..budget import RECIPE, plan
    from ..budget import recipe as frontier_recipe

    if recipe == "exact" and budget is None:
        return spec
    if budget is not None:
        if log is not None and processes().is_main_process:  # a minute or two for a ViT-B: say why it waits
            log(f"sizing every share number and delta rank for budget {budget:g}{' after int8' if int8 else ''} ...")
        picked = plan(net, budget, spec.replace(**RECIPE) if recipe == "frontier" else spec, int8=int8)
        said = f"budget {budget:g} of the teacher's bytes{' after int8' if int8 else ''}: {picked.describe()}"
    else:
        picked = frontier_recipe(net, spec.share, spec)
        said = (f"recipe frontier, the bytes of share {spec.share}: {picked.describe()} "
                "(--recipe exact builds the share you give as it is)")
    if log is not None and processes().is_main_process:
        log(said)
    return picked.spec


def _teacher_and_data(teacher: str, teacher_args, checkpoint, data: str, run: RunOptions):
    """The teacher (eval mode, with its data config), the config, and the train/val sets preprocessed as it wants.

    A teacher given by name with a ``checkpoint`` gets a head for the data's classes (unless
    ``teacher_args`` say otherwise) and the checkpoint's weights."""
    if checkpoint is not None and Path(teacher).expanduser().exists():
        raise ConfigError(
            f"--teacher {teacher} is a saved model; --teacher-checkpoint goes with a model name",
            "drop --teacher-checkpoint, or give --teacher NAME (e.g. deit_tiny_patch16_224)",
        )
    net = load_model(teacher, teacher_args, pretrained=checkpoint is None, use="a teacher")
    data_config = resolve_data_config(net)
    train, val = load_data(data, data_config, run.train_augment(), run.train_limit, run.val_limit)
    if checkpoint is not None:
        args = {"num_classes": train.num_classes, **(teacher_args or {})}
        net = apply_data_config(named_model(teacher, args, flag="--teacher-args"), data_config)
        load_user_weights(net, checkpoint, run.log, what="--teacher-checkpoint")
    check_classes(net, train, "teacher")
    return check_finite(net, f"teacher {teacher}").eval(), data_config, train, val


def _teacher_info(net: nn.Module, source: str, val, config: TrainConfig, data_config: DataConfig, main: bool) -> dict:
    """The teacher's source, depth and (main process) size, latency and validation accuracy."""
    from ..distill.hooks import num_layers

    info = {"source": source, "depth": num_layers(net)}
    if main:
        info.update(describe(net, data_config.input_size))
        from torch.utils.data import DataLoader

        batch = config.eval_batch_size or config.batch_size
        info.update(evaluate(net, DataLoader(val, batch_size=batch, num_workers=config.num_workers)))
    return info


def comparison_table(report: dict) -> str:
    """Teacher and student side by side (a ``compress`` report): params, MB, top-1/top-5, latency."""
    t, s = report["teacher"], report["model"]
    share = report["config"].get("asked_share", report["config"].get("share"))  # (the bytes asked for)
    rows = [
        ("teacher", t["params"], t["size_mb"], t["top1"], t["top5"], t["latency_ms"]),
        (f"student (share {share})", s["params"], s["size_mb"], report["val"]["top1"], report["val"]["top5"],
         s["latency_ms"]),
    ]  # fmt: skip
    lines = ["| model | params | MB | val top-1 | val top-5 | latency (ms/img) |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {p:,} | {mb:.2f} | {a:.2f} | {b:.2f} | {ms:.2f} |" for n, p, mb, a, b, ms in rows]
    return "\n".join(lines)


def _with_cached_logits(net: nn.Module, train, rc: dict, out: Path, main: bool) -> WithTeacherLogits:
    """``train`` with the teacher's logits, computed once (kept in ``checkpoints/teacher_logits.pt``)."""
    from ..distill.cache import cache_teacher_logits

    key = {k: rc[k] for k in ("teacher", "data", "train_limit", "augment")}
    key["teacher_weights"] = float(sum(p.double().sum() for p in net.parameters()))
    logits = cache_teacher_logits(net, train, out / "checkpoints" / "teacher_logits.pt", key, write=main)
    return WithTeacherLogits(train, logits)


def run_eval(
    model: str,
    data: str,
    batch_size: int = 256,
    val_limit: int | None = None,
    latency_runs: int = 30,
    *,
    predictions=None,
    num_workers: int = 0,
    compile: bool = False,
    device: str = "cpu",
) -> dict:
    """Top-1/top-5 on the validation split, unique parameters, MB and single-image latency.

    Images are preprocessed as the model's data config says. ``predictions``: also write a CSV with one
    row per validation image (``path,label,pred,pred_name,prob``). ``compile``: run the model compiled by
    ``torch.compile`` (inductor fuses a student's head-mixed attention into few kernels; compiling takes
    about a minute first), for the predictions and the latency alike. Relaxed-sharing deltas are folded into
    per-layer weights for both (:func:`minivit.fold_deltas`); sizes are the saved model's. ``device``: where the
    model runs (``cpu``, ``cuda``, ``cuda:1``), predictions and latency alike; int8 models run on the CPU."""
    from ..data import build_dataset, prediction_rows, write_predictions

    where = _eval_device(device)
    net = check_finite(load_model(model, pretrained=True), str(model)).eval()
    from ..export import is_quantized

    if where.type != "cpu" and is_quantized(net):
        raise ConfigError(f"{model} is an int8 model, which runs on the CPU only", "drop --device")
    data_config = resolve_data_config(net)
    val = build_dataset(data, "val", data_config=data_config, limit=val_limit)
    if len(val) == 0:
        raise ConfigError(f"dataset {data!r} has an empty val split")
    check_classes(net, val)
    runner = fold_deltas(net)  # relaxed sharing: one product per map (the saved model keeps its factors)
    runner = runner.to(where)
    runner = compiled(runner, val[0][0][None]) if compile else runner
    logits, targets = predict(runner, val, batch_size, num_workers)
    if predictions is not None:
        write_predictions(predictions, prediction_rows(val, logits))
    return {
        "model": str(model),
        "data": str(data),
        "samples": len(val),
        **accuracy(logits, targets),
        **describe(net, data_config.input_size, latency_runs, runner=runner),
        "compiled": bool(compile),
        "device": str(where),
        "img_size": list(data_config.img_size),
        "in_chans": data_config.in_chans,
        "data_config": data_config.to_json(),
        **({"predictions": str(predictions)} if predictions is not None else {}),
    }


def _eval_device(device: str) -> torch.device:
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}", "use cpu, cuda or cuda:N") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no GPU is visible to PyTorch", "use --device cpu")
    if where.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: only cpu and cuda are supported", "use cpu, cuda or cuda:N")
    return where


@torch.no_grad()
def predict(net: nn.Module, dataset, batch_size: int = 256, num_workers: int = 0):
    """``(logits [N, classes], targets [N])`` of ``net`` on ``dataset``, in the dataset's order."""
    from torch.utils.data import DataLoader

    device = next(net.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    logits, targets = [], []
    for batch in loader:
        logits.append(net(batch[0].to(device)).float().cpu())
        targets.append(batch[1])
    return torch.cat(logits), torch.cat(targets)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Top-1/top-5 (%) and mean cross-entropy, as :func:`~minivit.train.engine.evaluate` reports them."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]
    n = max(len(targets), 1)
    return {
        "top1": 100.0 * top[:, 0].sum().item() / n,
        "top5": 100.0 * top.any(dim=1).sum().item() / n,
        "loss": torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item() / n,
    }


@locks_output("minivit analyze")
def run_analyze(teacher: str, student: str, data: str, output, batches: int = 10, batch_size: int = 128) -> str:
    """``minivit analyze``: per-layer CKA plots and a size/speed table; returns a short summary.

    Both models see the same images, preprocessed as their (identical) data configs say."""
    from torch.utils.data import DataLoader

    from ..analysis.compare import analyze
    from ..data import build_dataset

    t = check_finite(load_model(teacher, pretrained=True, use="analysed"), str(teacher)).eval()
    s = check_finite(load_model(student, pretrained=True, use="analysed"), str(student)).eval()
    cfg_t, cfg_s = resolve_data_config(t), resolve_data_config(s)
    if cfg_t != cfg_s:
        raise ConfigError(
            f"the teacher and the student expect different images ({_brief(cfg_t)} vs {_brief(cfg_s)})",
            "compare a student with the teacher it was compressed from",
        )
    val = build_dataset(data, "val", data_config=cfg_t, limit=batches * batch_size)
    loader = DataLoader(val, batch_size=batch_size)
    summary = analyze(t, s, loader, output, (1, *cfg_t.input_size), max_batches=batches, names=("teacher", "student"))
    rows = summary["table"]
    cka = summary["cka_per_layer"]
    return (
        f"wrote {Path(output) / 'analysis.md'}: student {rows[1]['params']:,} params "
        f"(x{rows[1]['params_ratio']:.3f} of the teacher), latency x{rows[1]['latency_ratio']:.2f}, "
        f"CKA per layer {min(cka):.3f}..{max(cka):.3f} (last {cka[-1]:.3f})"
    )


def _brief(cfg: DataConfig) -> str:
    c, h, w = cfg.input_size
    mean = ",".join(f"{v:.3g}" for v in cfg.mean)
    return f"{c}x{h}x{w} {cfg.interpolation} crop {cfg.crop_pct:g} mean {mean}"


def describe_data_config(cfg: DataConfig) -> str:
    """One line for the user: what images the model takes."""
    std = ",".join(f"{v:.3g}" for v in cfg.std)
    return f"{_brief(cfg)} std {std} ({cfg.crop_mode})"


__all__ = [
    "LAST",
    "RunOptions",
    "accuracy",
    "comparison_table",
    "compress_configs",
    "compress_defaults",
    "describe_data_config",
    "load_data",
    "load_model",
    "named_model",
    "parse_model_args",
    "parse_value",
    "predict",
    "run_analyze",
    "run_compress",
    "run_eval",
    "run_train",
    "training_data_config",
]
