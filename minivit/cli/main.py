"""The ``minivit`` console script: ``train``, ``compress``, ``eval``, ``demo``, ``export``, ``analyze``, ``report``.

Mistakes in the input print one line, ``error: <what is wrong> (<how to fix it>)``, on stderr and
exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import MinivitError

EXAMPLES = {
    "train": "minivit train --model vit_small_patch16_224 --model-args img_size=28 patch_size=4 depth=4 "
    "embed_dim=64 num_heads=4 --data fashion-mnist --epochs 5 --output runs/teacher",
    "compress": "minivit compress --teacher runs/teacher --share 2 --data fashion-mnist --epochs 3 "
    "--output runs/share2",
    "eval": "minivit eval --model runs/share2 --data fashion-mnist",
    "demo": "minivit demo --output runs/demo",
    "export": "minivit export --model runs/share2 --format onnx --int8",
    "analyze": "minivit analyze --teacher runs/teacher --student runs/share2 --data fashion-mnist "
    "--output runs/analysis",
    "report": "minivit report runs/share2",
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str):
        raise MinivitError(f"{message}", f"see `{self.prog} --help`")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _share(text: str):
    return "all" if text == "all" else _positive_int(text)


def _training_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="built-in name (fashion-mnist, digits) or folder with train/ and val/")
    g.add_argument("--augment", action="store_true", help="light augmentation (random flip and shift)")
    g.add_argument("--train-limit", type=_positive_int, help="use at most N training images (class-balanced)")
    g.add_argument("--val-limit", type=_positive_int, help="use at most N validation images (class-balanced)")
    g.add_argument("--num-workers", type=int, default=0, help="data loader worker processes (default 0)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, required=True)
    g.add_argument("--batch-size", type=_positive_int, default=128, help="per process (default 128)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    g.add_argument("--min-lr", type=float, default=1e-5, help="final cosine learning rate (default 1e-5)")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up, may be fractional (default 1)")
    g.add_argument("--grad-accum", type=_positive_int, default=1, help="accumulate gradients over N batches")
    g.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    g.add_argument("--mixup", type=float, default=0.0, help="timm Mixup alpha (default 0: off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="timm CutMix alpha (default 0: off)")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--mixed-precision", choices=("no", "fp16", "bf16"), default="no", help="on GPU only (ignored on CPU)"
    )
    g = p.add_argument_group("output")
    g.add_argument("--output", required=True, help="run folder (model, config, metrics, checkpoints, report)")
    g.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N optimizer steps")
    g.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    g.add_argument("--force", action="store_true", help="resume despite a changed configuration, or overwrite a run")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument(
        "--log-grad-norms", type=int, nargs="?", const=10, default=0, metavar="EVERY",
        help="record per-layer gradient l2 norms every EVERY steps (default 10) to grad_norms.jsonl",
    )
    return p


def build_parser() -> Parser:
    parser = Parser(
        prog="minivit",
        description="Compress vision transformers by weight multiplexing (MiniViT, CVPR 2022).",
        epilog="Run `minivit COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    common = _training_options()

    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a model from scratch (a teacher or a baseline)",
        description="Train a timm/minivit model from scratch. num_classes and in_chans come from the data "
        "unless given in --model-args.",
        epilog="example: " + EXAMPLES["train"],
    )
    p.add_argument(
        "--model", required=True, help="model name, e.g. vit_small_patch16_224 or mini_deit_tiny_patch16_224"
    )
    p.add_argument("--model-args", nargs="*", default=[], metavar="KEY=VALUE", help="model keyword arguments")

    p = sub.add_parser(
        "compress",
        parents=[common],
        help="multiplex a teacher into a smaller student and distil it",
        description="Weight multiplexing: share the blocks of a teacher K at a time, add per-layer transforms, "
        "and distil the student from the teacher (logits, attention relations, hidden-state relations).",
        epilog="example: " + EXAMPLES["compress"],
    )
    p.add_argument("--teacher", required=True, help="run folder, checkpoint (.pt) or timm model name")
    p.add_argument("--teacher-args", nargs="*", default=[], metavar="KEY=VALUE", help="for a teacher given by name")
    p.add_argument("--share", type=_share, default=2, help="layers per shared block, or 'all' for one (default 2)")
    p.add_argument("--no-transforms", action="store_true", help="plain weight sharing, no per-layer head mixing")
    p.add_argument("--shared-norms", action="store_true", help="share the LayerNorms too (default: per layer)")
    p.add_argument("--init", choices=("first", "mean", "random"), default="first", help="shared weights start from")
    p.add_argument(
        "--transform-init", choices=("identity", "trunc_normal"), default="identity", help="head-mixing init"
    )
    p.add_argument("--distill", default="logits,attn,hidden", help="terms to distil (default logits,attn,hidden)")
    p.add_argument("--alpha", type=float, default=0.0, help="hard-label CE weight; 1-alpha weighs soft CE (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="soft CE temperature (default 1)")
    p.add_argument("--beta", type=float, default=1.0, help="attention-relation weight (default 1)")
    p.add_argument("--gamma", type=float, default=4.9, help="hidden-relation weight (default 4.9 = 0.1 x 49)")
    p.add_argument("--hidden-loss", choices=("relation", "projection"), default="relation")
    p.add_argument("--layers-student", help="student blocks to distil, e.g. 1,3 (default: the last one)")
    p.add_argument("--layers-teacher", help="teacher blocks paired with them")
    p.add_argument("--num-pairs", type=_positive_int, help="number of evenly spread layer pairs")
    p.add_argument(
        "--cache-teacher-logits", action="store_true", help="compute teacher logits once (needs --distill logits)"
    )

    p = sub.add_parser(
        "eval",
        help="accuracy, size and latency of a model",
        description="Top-1/top-5 on the validation split, parameters, MB and single-image latency.",
        epilog="example: " + EXAMPLES["eval"],
    )
    p.add_argument("--model", required=True, help="run folder, checkpoint (.pt) or .safetensors file")
    p.add_argument("--data", required=True, help="built-in name or folder with val/")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--val-limit", type=_positive_int)
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser(
        "demo",
        help="the whole story on a small dataset, in a few minutes on a laptop CPU",
        description="Train a small ViT teacher on Fashion-MNIST (when found locally, else scikit-learn digits), "
        "compress it at share 2 and to a single shared block, evaluate and tabulate params, MB, top-1, latency.",
        epilog="example: " + EXAMPLES["demo"],
    )
    p.add_argument("--output", default="runs/demo", help="where the runs and the table go (default runs/demo)")
    p.add_argument("--data", default=None, help="dataset (default: fashion-mnist if found locally, else digits)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo instead of starting over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    from ..export import add_export_arguments

    p = sub.add_parser(
        "export",
        help="export a saved model for deployment (ONNX, TorchScript, safetensors; optional int8)",
        description="Export a model folder. The ONNX graph keeps shared weights shared; outputs are checked "
        "against PyTorch (onnxruntime for ONNX) and the largest difference is printed.",
        epilog="example: " + EXAMPLES["export"],
    )
    add_export_arguments(p)
    p = sub.add_parser(
        "analyze",
        help="compare a teacher and a student: per-layer CKA plots, params, MB, FLOPs, latency",
        description="Per-layer linear CKA between the two models' block outputs on a dataset (line plot and "
        "heatmap), and a table of parameters, MB, FLOPs and latency: PNGs plus analysis.md in --output.",
        epilog="example: " + EXAMPLES["analyze"],
    )
    p.add_argument("--teacher", required=True, help="model folder, timm name or checkpoint")
    p.add_argument("--student", required=True, help="model folder, timm name or checkpoint")
    p.add_argument("--data", required=True, help="built-in name (fashion-mnist, digits) or folder with train/ and val/")
    p.add_argument("--output", required=True, help="folder for the PNGs, analysis.md and analysis.json")
    p.add_argument("--batches", type=_positive_int, default=10, help="validation batches for CKA (default 10)")
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p = sub.add_parser(
        "report",
        help="training curves (each loss term, top-1) and gradient norms of a run as PNG + markdown",
        description="Read RUN_DIR/metrics.jsonl (and grad_norms.jsonl, report.json when present) and write "
        "curves_*.png, grad_norms_*.png and report.md into RUN_DIR.",
        epilog="example: " + EXAMPLES["report"],
    )
    p.add_argument("run_dir", help="a folder written by `minivit train` or `minivit compress`")
    return parser


def _config(a):
    from ..train.engine import TrainConfig

    return TrainConfig(
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        min_lr=a.min_lr,
        weight_decay=a.weight_decay,
        warmup_epochs=a.warmup_epochs,
        grad_accum=a.grad_accum,
        clip_grad=a.clip_grad,
        mixup=a.mixup,
        cutmix=a.cutmix,
        label_smoothing=a.label_smoothing,
        seed=a.seed,
        num_workers=a.num_workers,
        checkpoint_every=a.checkpoint_every,
        mixed_precision=a.mixed_precision,
        progress=not a.no_progress,
    )


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


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.command is None:
        parser.print_help()
        return 0
    from . import commands

    if a.command == "train":
        report = commands.run_train(
            a.model,
            a.data,
            a.output,
            _config(a),
            commands.parse_model_args(a.model_args),
            augment=a.augment,
            train_limit=a.train_limit,
            val_limit=a.val_limit,
            resume=a.resume,
            force=a.force,
            callbacks=_callbacks(a),
        )
        _print_main(report)
    elif a.command == "compress":
        report = commands.run_compress(
            a.teacher,
            a.data,
            a.output,
            _config(a),
            share=a.share,
            transforms=not a.no_transforms,
            separate_norms=not a.shared_norms,
            init=a.init,
            transform_init=a.transform_init,
            distill=commands.parse_distill(a.distill),
            alpha=a.alpha,
            temperature=a.temperature,
            beta=a.beta,
            gamma=a.gamma,
            student_layers=commands.parse_layers(a.layers_student),
            teacher_layers=commands.parse_layers(a.layers_teacher),
            num_pairs=a.num_pairs,
            hidden_loss=a.hidden_loss,
            teacher_args=commands.parse_model_args(a.teacher_args),
            cache_logits=a.cache_teacher_logits,
            augment=a.augment,
            train_limit=a.train_limit,
            val_limit=a.val_limit,
            resume=a.resume,
            force=a.force,
            callbacks=_callbacks(a),
        )
        _print_main(report)
    elif a.command == "eval":
        r = commands.run_eval(a.model, a.data, a.batch_size, a.val_limit)
        if a.json:
            print(json.dumps(r, indent=2))
        else:
            print(
                f"{r['model']} on {r['data']} ({r['samples']} images): top-1 {r['top1']:.2f}  top-5 {r['top5']:.2f}  "
                f"{r['params']:,} params  {r['size_mb']:.2f} MB  {r['latency_ms']:.2f} ms/img"
            )
    elif a.command == "demo":
        from .demo import run_demo

        run_demo(a.output, data=a.data, resume=a.resume, progress=not a.no_progress)
    elif a.command == "export":
        from ..export import export_from_args, format_summary

        print(format_summary(export_from_args(a)))
    elif a.command == "analyze":
        print(commands.run_analyze(a.teacher, a.student, a.data, a.output, a.batches, a.batch_size))
    elif a.command == "report":
        from ..analysis.report import write_report

        print(f"wrote {write_report(a.run_dir)}")
    return 0


def _callbacks(a) -> list:
    if not a.log_grad_norms:
        return []
    from pathlib import Path

    from ..analysis.grad_norms import GradNormLogger

    return [GradNormLogger(Path(a.output) / "grad_norms.jsonl", a.log_grad_norms)]


def _terminate(signum, frame):  # SIGTERM (a scheduler, `kill`) ends a run like Ctrl-C: one line, no traceback
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import signal

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = run(argv)
    except MinivitError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        code = 2
    except OSError as e:  # the environment, not the input: disk full, permissions, ...
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
