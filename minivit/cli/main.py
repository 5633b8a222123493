"""The ``minivit`` console script: ``train``, ``compress``, ``eval``, ``demo``, ``export``, ``analyze``, ``report``,
``push``.

Mistakes in the input print one line, ``error: <what is wrong> (<how to fix it>)``, on stderr and
exit with status 2; any other failure prints one line too and exits with status 1. ``--debug`` (or
the environment variable ``MINIVIT_DEBUG=1``) adds the traceback.

The options of ``train`` and ``compress`` are built from the config dataclasses
(:class:`~minivit.train.TrainConfig`, :class:`~minivit.MultiplexSpec`,
:class:`~minivit.distill.DistillConfig`; see :mod:`minivit.cli.options`) and handed to the command
functions as those objects.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from ..errors import ConfigError, MinivitError
from .options import add_options, from_args, int_at_least, positive_int

EXAMPLES = {
    "train": "minivit train --model vit_small_patch16_224 --model-args img_size=28 patch_size=4 depth=4 "
    "embed_dim=64 num_heads=4 --data fashion-mnist --epochs 5 --output runs/teacher; fine-tuning: "
    "minivit train --model deit_tiny_patch16_224 --pretrained --data path/to/folder --epochs 10 --augment "
    "--aa rand-m9-mstd0.5-inc1 --reprob 0.25 --output runs/deit",
    "compress": "minivit compress --teacher runs/teacher --share 2 --data fashion-mnist --epochs 3 "
    "--output runs/share2",
    "eval": "minivit eval --model runs/share2 --data fashion-mnist --predictions runs/share2/predictions.csv",
    "demo": "minivit demo --output runs/demo",
    "export": "minivit export --model runs/share2 --format onnx --int8",
    "analyze": "minivit analyze --teacher runs/teacher --student runs/share2 --data fashion-mnist "
    "--output runs/analysis",
    "report": "minivit report runs/share2",
    "push": "minivit push --model runs/share2 --repo USER/mini-vit-share2",
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and no abbreviated options (``--checkpoint`` is not ``--checkpoint-every``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise MinivitError(f"{message}", f"see `{self.prog} --help`")


def _parent(*adders) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for add in adders:
        add(p)
    return p


def _debug_option(p, default=argparse.SUPPRESS) -> None:
    p.add_argument("--debug", action="store_true", default=default, help="show the traceback of an error")


def _data_options(p) -> None:
    from ..data import AugmentConfig

    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="built-in name (fashion-mnist, digits) or folder with train/ and val/")
    g.add_argument(
        "--augment", action="store_true",
        help="augment the training images: timm's train transform for folders (random resized crop, flip, "
        "--aa or colour jitter, random erasing); a random flip and shift (+ random erasing) for fashion-mnist",
    )  # fmt: skip
    g.add_argument("--train-limit", type=positive_int, help="use at most N training images (class-balanced)")
    g.add_argument("--val-limit", type=positive_int, help="use at most N validation images (class-balanced)")
    add_options(p, AugmentConfig, "augmentation (with --augment; timm's train.py flags and defaults)")


def _training_options(p) -> None:
    from ..train.engine import TrainConfig

    add_options(p, TrainConfig, "training")


def _output_options(p) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output", required=True, help="run folder (model, config, metrics, checkpoints, report)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    g.add_argument("--force", action="store_true", help="resume despite a changed configuration, or overwrite a run")
    g.add_argument(
        "--log-grad-norms", type=int, nargs="?", const=10, default=0, metavar="EVERY",
        help="record per-layer gradient l2 norms every EVERY steps (default 10) to grad_norms.jsonl",
    )  # fmt: skip


# name: (one-line help, description); the example is EXAMPLES[name]
COMMANDS = {
    "train": (
        "train a model from scratch or fine-tune pretrained weights (a teacher or a baseline)",
        "Train a timm/minivit model from scratch (num_classes and in_chans come from the data unless given in "
        "--model-args), or fine-tune timm's pretrained weights (--pretrained) or your own (--checkpoint FILE). "
        "Preprocessing comes from the model, as in timm; the saved model records it.",
    ),
    "compress": (
        "multiplex a teacher into a smaller student and distil it",
        "Weight multiplexing: share the blocks of a teacher K at a time, add per-layer transforms, and distil the "
        "student from the teacher (logits, attention relations, hidden-state relations).",
    ),
    "eval": (
        "accuracy, size and latency of a model",
        "Top-1/top-5 on the validation split (preprocessed as the model records), parameters, MB and "
        "single-image latency; --predictions writes one CSV row per image.",
    ),
    "demo": (
        "the whole story on a small dataset, in a few minutes on a laptop CPU",
        "Train a small ViT teacher on Fashion-MNIST (downloaded once; offline: scikit-learn digits), compress it "
        "at share 2 and to a single shared block, evaluate and tabulate params, MB, top-1, latency.",
    ),
    "export": (
        "export a saved model for deployment (ONNX, TorchScript, safetensors; optional int8)",
        "Export a model folder. The ONNX graph keeps shared weights shared; outputs are checked against PyTorch "
        "(onnxruntime for ONNX) and the largest difference is printed.",
    ),
    "analyze": (
        "compare a teacher and a student: per-layer CKA plots, params, MB, FLOPs, latency",
        "Per-layer linear CKA between the two models' block outputs on a dataset (line plot and heatmap), and a "
        "table of parameters, MB, FLOPs and latency: PNGs plus analysis.md in --output.",
    ),
    "report": (
        "training curves (each loss term, top-1) and gradient norms of a run as PNG + markdown",
        "Read RUN_DIR/metrics.jsonl (and grad_norms.jsonl, report.json when present) and write curves_*.png, "
        "grad_norms_*.png and report.md into RUN_DIR.",
    ),
    "push": (
        "upload a saved model to the Hugging Face Hub as a timm model",
        "Upload a model folder (config.json in timm's layout, model.safetensors, a model card from report.json) "
        "with timm's push_to_hf_hub; then timm.create_model('hf-hub:USER/NAME', pretrained=True) loads it.",
    ),
}


def _train_arguments(p) -> None:
    p.add_argument(
        "--model", required=True, help="model name, e.g. vit_small_patch16_224 or mini_deit_tiny_patch16_224"
    )
    p.add_argument("--model-args", nargs="*", default=[], metavar="KEY=VALUE", help="model keyword arguments")
    p.add_argument(
        "--pretrained", action="store_true",
        help="fine-tune timm's pretrained weights (downloaded; the head is sized to the data's classes, and the "
        "model's own preprocessing is used)",
    )  # fmt: skip
    _weights_file(p, "--checkpoint", "fine-tune your own weights instead")


def _weights_file(p, flag: str, what: str) -> None:
    p.add_argument(flag, metavar="FILE", help=f"{what}: .safetensors, or .pth/.pt (read with weights_only=True)")


def _compress_arguments(p) -> None:
    from ..distill.config import DistillConfig
    from ..spec import MultiplexSpec

    p.add_argument("--teacher", required=True, help="run folder, checkpoint (.pt) or timm model name")
    p.add_argument("--teacher-args", nargs="*", default=[], metavar="KEY=VALUE", help="for a teacher given by name")
    _weights_file(p, "--teacher-checkpoint", "the weights of a teacher given by name (default: timm's pretrained ones)")
    add_options(p, MultiplexSpec, "multiplexing")
    p.add_argument(
        "--budget", type=_fraction, metavar="F",
        help="keep this fraction of the teacher's stored bytes (e.g. 0.25): picks the share number, delta rank, "
        "init and bias offsets (minivit.budget.plan) and says what it picked; overrides --share, --delta-rank, "
        "--no-delta-bias and --init",
    )  # fmt: skip
    p.add_argument(
        "--budget-int8", action="store_true",
        help="count --budget against the student's int8 file (export --format safetensors --int8) instead of its "
        "fp32 one, still as a fraction of the fp32 teacher's bytes: for a model deployed in int8",
    )  # fmt: skip
    p.add_argument(
        "--recipe", choices=("frontier", "exact"), default=None,
        help="frontier (default): the bytes of --share K spent as the accuracy-per-byte benchmark's winner "
        "(relaxed sharing: share number, delta rank and init picked by minivit.budget.recipe, no head mixing; "
        "it says what it built); exact: build --share, --delta-rank, --init, ... as given (the default "
        "when --delta-rank or --init is given)",
    )  # fmt: skip
    add_options(p, DistillConfig, "distillation")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.25, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _eval_arguments(p) -> None:
    p.add_argument("--model", required=True, help="run folder, checkpoint (.pt) or .safetensors file")
    p.add_argument("--data", required=True, help="built-in name or folder with val/")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--val-limit", type=positive_int)
    p.add_argument("--num-workers", type=int_at_least(0), default=0, metavar="N", help="data loader worker processes")
    p.add_argument(
        "--predictions", metavar="FILE.csv",
        help="write one row per validation image: path, label, pred (class index), pred_name, prob",
    )  # fmt: skip
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda or cuda:N")
    p.add_argument(
        "--compile", action="store_true",
        help="run the model compiled by torch.compile (faster on large validation sets; about a minute to compile)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _demo_arguments(p) -> None:
    p.add_argument("--output", default="runs/demo", help="where the runs and the table go (default runs/demo)")
    p.add_argument(
        "--data", default=None,
        help="dataset (default: fashion-mnist, downloaded once into the cache; offline: digits)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo instead of starting over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _export_arguments(p) -> None:
    from ..export import add_export_arguments

    add_export_arguments(p)
    p.add_argument("--force", action="store_true", help="write into a folder that holds another model or run")


def _analyze_arguments(p) -> None:
    p.add_argument("--teacher", required=True, help="model folder, timm name or checkpoint")
    p.add_argument("--student", required=True, help="model folder, timm name or checkpoint")
    p.add_argument("--data", required=True, help="built-in name (fashion-mnist, digits) or folder with train/ and val/")
    p.add_argument("--output", required=True, help="folder for the PNGs, analysis.md and analysis.json")
    p.add_argument("--batches", type=positive_int, default=10, help="validation batches for CKA (default 10)")
    p.add_argument("--batch-size", type=positive_int, default=128)


def _report_arguments(p) -> None:
    p.add_argument("run_dir", help="a folder written by `minivit train` or `minivit compress`")


def _push_arguments(p) -> None:
    from .push import add_push_arguments

    add_push_arguments(p)


def build_parser() -> Parser:
    parser = Parser(
        prog="minivit",
        description="Compress vision transformers by weight multiplexing (MiniViT, CVPR 2022).",
        epilog="Run `minivit COMMAND --help` for the options of a command. "
        "MINIVIT_DEBUG=1 in the environment is --debug.",
    )
    _debug_option(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    debug = _parent(_debug_option)
    training = _parent(_data_options, _training_options, _output_options, _debug_option)
    for name, (help_text, description) in COMMANDS.items():
        p = sub.add_parser(
            name,
            parents=[training if name in ("train", "compress") else debug],
            help=help_text,
            description=description,
            epilog="example: " + EXAMPLES[name],
        )
        ARGUMENTS[name](p)
        p.set_defaults(handler=HANDLERS[name])
    return parser


# --------------------------------------------------------------------------- commands


def _summary(report: dict) -> str:
    m = report["model"]
    text = (
        f"done: val top-1 {report['val']['top1']:.2f}  top-5 {report['val']['top5']:.2f}  "
        f"{m['params']:,} params  {m['size_mb']:.2f} MB  {m['latency_ms']:.2f} ms/img"
    )
    if "compression" in report:
        c = report["compression"]
        text += f"  ({c['params_ratio']:.2f}x fewer params than the teacher, top-1 drop {c['top1_drop']:+.2f})"
    return text


def _print_main(report: dict) -> None:
    """The summary line, once (by the main process of a multi-process run)."""
    from ..train.engine import processes

    if processes().is_main_process:
        print(_summary(report), flush=True)


def _augmentation(a):
    """The augmentation options; tuning them without ``--augment`` is a mistake."""
    from ..data import AugmentConfig

    aug = from_args(AugmentConfig, a)
    changed = [f"--{k.replace('_', '-')}" for k, v in aug.to_dict().items() if v != AugmentConfig().to_dict()[k]]
    if changed and not a.augment:
        raise ConfigError(f"{', '.join(changed)} tune(s) the training augmentation, which is off", "add --augment")
    return aug


def _run_options(a):
    """What ``train`` and ``compress`` take besides their configs: data subset, output folder handling."""
    from .commands import RunOptions

    callbacks = []
    if a.log_grad_norms:
        from pathlib import Path

        from ..analysis.grad_norms import GradNormLogger

        callbacks.append(GradNormLogger(Path(a.output) / "grad_norms.jsonl", a.log_grad_norms))
    aug = _augmentation(a)
    return RunOptions(a.augment, a.train_limit, a.val_limit, a.resume, a.force, callbacks, augmentation=aug)


def _train(a) -> None:
    from ..train.engine import TrainConfig
    from . import commands

    config = from_args(TrainConfig, a)
    model_args = commands.parse_model_args(a.model_args)
    report = commands.run_train(
        a.model, a.data, a.output, config, model_args, _run_options(a), pretrained=a.pretrained, checkpoint=a.checkpoint
    )
    _print_main(report)


def _compress(a) -> None:
    from ..distill.config import DistillConfig
    from ..spec import MultiplexSpec
    from ..train.engine import TrainConfig
    from . import commands

    report = commands.run_compress(
        a.teacher,
        a.data,
        a.output,
        from_args(TrainConfig, a),
        spec=from_args(MultiplexSpec, a),
        distill=from_args(DistillConfig, a),
        teacher_args=commands.parse_model_args(a.teacher_args, "--teacher-args"),
        run=_run_options(a),
        teacher_checkpoint=a.teacher_checkpoint,
        budget=a.budget,
        budget_int8=a.budget_int8,
        recipe=a.recipe,
        given=getattr(a, "given", None) or set(),  # the flags typed: the recipe fills in the others
    )
    _print_main(report)


def _eval(a) -> None:
    from . import commands

    r = commands.run_eval(
        a.model, a.data, a.batch_size, a.val_limit, predictions=a.predictions, num_workers=a.num_workers,
        compile=a.compile, device=a.device,
    )
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        print(
            f"{r['model']} on {r['data']} ({r['samples']} images): top-1 {r['top1']:.2f}  top-5 {r['top5']:.2f}  "
            f"{r['params']:,} params  {r['size_mb']:.2f} MB  {r['latency_ms']:.2f} ms/img"
        )
        if a.predictions:
            print(f"wrote {r['predictions']}")


def _demo(a) -> None:
    from .demo import run_demo

    run_demo(a.output, data=a.data, resume=a.resume, progress=not a.no_progress)


def _export(a) -> None:
    from ..data import resolve_data_config
    from ..export import export_from_args, format_summary
    from ..io import lock_output
    from . import commands

    with lock_output(commands.export_folder(a.model, a.format, a.output, a.int8, a.force), "minivit export"):
        print(format_summary(export_from_args(a)))
    data_config = resolve_data_config(commands.load_model(a.model))
    print(f"  preprocessing (apply before the exported model): {commands.describe_data_config(data_config)}")


def _analyze(a) -> None:
    from . import commands

    print(commands.run_analyze(a.teacher, a.student, a.data, a.output, a.batches, a.batch_size))


def _report(a) -> None:
    from ..analysis.report import write_report

    print(f"wrote {write_report(a.run_dir)}")


def _push(a) -> None:
    from .push import run_push

    print(run_push(a.model, a.repo, a.private, a.revision))


ARGUMENTS = {
    "train": _train_arguments,
    "compress": _compress_arguments,
    "eval": _eval_arguments,
    "demo": _demo_arguments,
    "export": _export_arguments,
    "analyze": _analyze_arguments,
    "report": _report_arguments,
    "push": _push_arguments,
}
HANDLERS = {
    "train": _train,
    "compress": _compress,
    "eval": _eval,
    "demo": _demo,
    "export": _export,
    "analyze": _analyze,
    "report": _report,
    "push": _push,
}


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.command is None:
        parser.print_help()
        return 0
    a.handler(a)
    return 0


# --------------------------------------------------------------------------- errors and exit codes


def _terminate(signum, frame):  # SIGTERM (a scheduler, `kill`) ends a run like Ctrl-C: one line, no traceback
    raise KeyboardInterrupt


def debug_requested(argv: list[str]) -> bool:
    """``--debug`` among the arguments, or ``MINIVIT_DEBUG`` set to 1/true/yes."""
    env = os.environ.get("MINIVIT_DEBUG", "").strip().lower() in ("1", "true", "yes")
    return env or "--debug" in argv[: argv.index("--") if "--" in argv else len(argv)]


def _fail(line: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"error: {' '.join(line.split())}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    import signal

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    debug = debug_requested(argv)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = run(argv)
    except MinivitError as e:
        code = _fail(str(e), 2, debug)
    except OSError as e:  # the environment, not the input: disk full, permissions, ...
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        code = _fail(f"{e.strerror or e}{where}", 2, debug)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    except Exception as e:  # a bug, not the input: still one line, the traceback on request
        hint = "" if debug else " (rerun with --debug or MINIVIT_DEBUG=1 for the traceback)"
        code = _fail(f"internal error: {type(e).__name__}: {e}{hint}", 1, debug)
    sys.exit(code)


if __name__ == "__main__":
    main()
