"""ONNX file sizes of DeiT teachers and their weight-multiplexed students, fp32 and int8.

Builds (random weights, nothing downloaded) timm ``deit_small_patch16_224`` and ``deit_tiny_patch16_224``
(10 classes), the MiniViT students of DeiT-S with share 2 and share 12 (a single stored block) made by
:func:`minivit.multiplex`, and a Mini-DeiT-Ti. Every model is exported with
:func:`minivit.export.export_onnx` into a temporary folder; the script prints

* the ONNX file size, the number of (unique) weight tensors and the ratio to the teacher's file;
* the largest onnxruntime vs PyTorch output difference (batch 1 and 3, dynamic batch axis);
* the int8 file (onnxruntime dynamic quantisation of the fp32 graph) and its ratio to the teacher;
* the state-dict chain teacher -> student -> torch.ao int8 student (:func:`minivit.export.size_report`).

All parameters get N(0, 0.02) noise first, as trained weights would, so that no two tensors are equal
by accident (freshly initialised biases are all zero, norms all one, and the exporter merges equal
tensors, which would flatter every file alike).

Optionally, ``--model-dir DIR`` (a trained model folder, e.g. from ``minivit train`` on Fashion-MNIST)
measures the top-1 drop of int8 on the Fashion-MNIST test set, with torch.ao int8 and with the
onnxruntime int8 file; ``--quick-train N`` first trains a small Mini-DeiT on Fashion-MNIST for N epochs
(CPU, a few minutes) to have such a folder.

``--tools`` instead compares, on share-12 students of a 12-layer DeiT-S-shaped ViT (widths 192 and 48,
32x32 input), what each ONNX tool does to the file: the raw export of each exporter, onnxscript's
optimiser (default and unlimited folding sizes), onnxruntime's offline graph optimisation, the onnx_ir
passes alone, and :func:`minivit.export.share_weights` (the figures in ``minivit/export/onnx_graph.py``).

    .venv/bin/python benchmarks/export_sizes.py [--json out.json] [--model-dir DIR | --quick-train 1] [--tools]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import minivit
from minivit.export import (
    export_onnx,
    quantize_dynamic_int8,
    quantize_onnx_file,
    share_weights,
    size_report,
    state_dict_bytes,
    verify_onnx,
    weight_stats,
)
from minivit.measure import count_parameters, infer_input_size, tensor_bytes, to_mb

SHARED_FMNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"


def noisy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def build_models() -> list[tuple[str, str | None, torch.nn.Module]]:
    """``(name, teacher name or None, model)`` in export order."""
    torch.manual_seed(0)
    deit_s = noisy(minivit.create_model("deit_small_patch16_224", num_classes=10), 1)
    deit_t = noisy(minivit.create_model("deit_tiny_patch16_224", num_classes=10), 2)
    return [
        ("DeiT-S", None, deit_s),
        ("MiniViT-S share 2", "DeiT-S", noisy(minivit.multiplex(deit_s, share=2), 3)),
        ("MiniViT-S share 12", "DeiT-S", noisy(minivit.multiplex(deit_s, share=12), 4)),
        ("DeiT-Ti", None, deit_t),
        ("Mini-DeiT-Ti", "DeiT-Ti", noisy(minivit.create_model("mini_deit_tiny_patch16_224", num_classes=10), 5)),
    ]


def onnx_sizes(workdir: Path) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    models = build_models()
    by_name = {name: m for name, _, m in models}
    for name, teacher, model in models:
        t0 = time.perf_counter()
        path = workdir / f"{name.replace(' ', '_')}.onnx"
        info = export_onnx(model, path, (1, 3, 224, 224))
        t_export = time.perf_counter() - t0
        int8_path = path.with_suffix(".int8.onnx")
        int8_stats = quantize_onnx_file(path, int8_path)
        int8_check = verify_onnx(int8_path, model, (1, 3, 224, 224), batches=(2,))  # vs fp32 PyTorch
        rows.append(
            {
                "model": name,
                "teacher": teacher,
                "params": count_parameters(model),
                "exporter": info["exporter"],
                "opset": info["opset"],
                "onnx_bytes": info["bytes"],
                "onnx_mb": info["mb"],
                "initializers": info["num_initializers"],
                "unique_initializers": info["unique_initializers"],
                "weights_shared": info["weights_shared"],
                "ort_max_abs_diff": info["max_abs_diff"],
                "ort_max_abs_ref": info["max_abs_ref"],
                "export_s": round(t_export, 1),
                "int8_onnx_bytes": int8_path.stat().st_size,
                "int8_int8_weights": int8_stats["num_initializers"],
                "int8_ort_max_abs_diff_vs_fp32": int8_check["max_abs_diff"],
                "int8_ort_max_abs_ref": int8_check["max_abs_ref"],
            }
        )
        print(f"  exported {name}: {info['mb']:.2f} MB in {t_export:.0f} s", file=sys.stderr)
    base = {r["model"]: r for r in rows}
    for r in rows:
        t = base[r["teacher"]] if r["teacher"] else r
        r["ratio_vs_teacher"] = round(t["onnx_bytes"] / r["onnx_bytes"], 2)
        r["int8_ratio_vs_own_fp32"] = round(r["onnx_bytes"] / r["int8_onnx_bytes"], 2)
        r["int8_ratio_vs_teacher"] = round(t["onnx_bytes"] / r["int8_onnx_bytes"], 2)
    chain = size_report(by_name["DeiT-S"], by_name["MiniViT-S share 2"])
    chain12 = size_report(by_name["DeiT-S"], by_name["MiniViT-S share 12"])
    return rows, {"share2": chain, "share12": chain12}


def print_sizes(rows: list[dict], chains: dict) -> None:
    print("\nONNX export (random weights, 224x224, 10 classes; dynamic batch; onnxruntime CPU)\n")
    head = (
        "| model | params | ONNX MB | weight tensors | x smaller than teacher | ORT max abs diff "
        "| int8 ONNX MB | int8 x smaller than teacher | int8 vs fp32 max abs diff (max logit) |"
    )
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['onnx_mb']:.2f} | {r['unique_initializers']} "
            f"| {r['ratio_vs_teacher']:.2f} | {r['ort_max_abs_diff']:.2e} | {r['int8_onnx_bytes'] / 2**20:.2f} "
            f"| {r['int8_ratio_vs_teacher']:.2f} | {r['int8_ort_max_abs_diff_vs_fp32']:.2e} "
            f"({r['int8_ort_max_abs_ref']:.2f}) |"
        )
    print("\nState-dict chain (torch.save bytes; int8 = torch.ao dynamic int8 Linear layers)\n")
    for key, c in chains.items():
        r = c["ratios"]
        print(
            f"DeiT-S {c['teacher']['mb']:.2f} MB -> MiniViT-S {key} {c['student']['mb']:.2f} MB "
            f"(x{r['teacher/student']:.2f}) -> int8 {c['student_int8']['mb']:.2f} MB "
            f"(x{r['student/student_int8']:.2f}); combined x{r['teacher/student_int8']:.2f}"
        )


def fashion_mnist_loader(data: str, img_size: tuple[int, int], in_chans: int, batch_size: int, train: bool):
    from minivit.data import build_loaders

    train_loader, val_loader, _ = build_loaders(
        data, img_size, in_chans, batch_size, train_augment=train, download=False
    )
    return train_loader if train else val_loader


@torch.no_grad()
def top1(model, loader) -> float:
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    return correct / total


def top1_onnx(path: Path, loader) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in loader:
        pred = sess.run(None, {name: x.numpy()})[0].argmax(-1)
        correct += int((pred == y.numpy()).sum())
        total += len(y)
    return correct / total


def quick_train(data: str, epochs: int, out: Path) -> Path:
    """Train a small Mini-DeiT (share 2, 6 layers, 28x28 grey input) on Fashion-MNIST; save it to ``out``."""
    torch.manual_seed(0)
    model = minivit.create_model(
        "mini_deit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, num_classes=10, depth=6,
        embed_dim=96, num_heads=3, transform_init="identity",
    )
    loader = fashion_mnist_loader(data, (28, 28), 1, 128, train=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for i, (x, y) in enumerate(loader):
            loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 100 == 0:
                print(f"  epoch {epoch} step {i}/{len(loader)} loss {loss.item():.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    minivit.save_pretrained(model.eval(), out)
    return out


def int8_accuracy(model_dir: Path, data: str, workdir: Path, index: int = 0) -> dict:
    from minivit.export import run_export

    model = minivit.from_pretrained(model_dir)
    _, c, h, w = infer_input_size(model)
    loader = fashion_mnist_loader(data, (h, w), c, 256, train=False)
    q = quantize_dynamic_int8(model)
    stem = workdir / f"{index}-{model_dir.name}"
    fp32_onnx = run_export(model_dir, "onnx", stem.with_suffix(".onnx"))
    int8_onnx = run_export(model_dir, "onnx", stem.with_suffix(".int8.onnx"), int8=True)
    res = {
        "model_dir": str(model_dir),
        "params": count_parameters(model),
        "top1_fp32": top1(model, loader),
        "top1_int8_torch": top1(q, loader),
        "top1_fp32_onnx": top1_onnx(Path(fp32_onnx["path"]), loader),
        "top1_int8_onnx": top1_onnx(Path(int8_onnx["path"]), loader),
        "fp32_onnx_mb": fp32_onnx["mb"],
        "int8_onnx_mb": int8_onnx["mb"],
        "state_dict_bytes_fp32": state_dict_bytes(model),
        "state_dict_bytes_int8": state_dict_bytes(q),
    }
    res["drop_int8_torch"] = res["top1_fp32"] - res["top1_int8_torch"]
    res["drop_int8_onnx"] = res["top1_fp32"] - res["top1_int8_onnx"]
    print(
        f"| {model_dir.parent.name}/{model_dir.name} ({res['params'] / 1e6:.2f} M) | {res['top1_fp32']:.4f} "
        f"| {res['top1_int8_torch']:.4f} "
        f"| {res['top1_fp32_onnx']:.4f} | {res['top1_int8_onnx']:.4f} "
        f"| {100 * res['drop_int8_torch']:+.2f} / {100 * res['drop_int8_onnx']:+.2f} pts "
        f"| {res['fp32_onnx_mb']:.2f} -> {res['int8_onnx_mb']:.2f} |"
    )
    return res


def print_accuracy_header() -> None:
    print("\nFashion-MNIST test set (10,000 images), top-1\n")
    print(
        "| model | fp32 | int8 (torch.ao) | fp32 ONNX | int8 ONNX (onnxruntime) | drop torch / ONNX "
        "| ONNX MB fp32 -> int8 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")


def _tool_passes(proto, which: str):
    """``proto`` after one tool (a copy); ``which`` names the row of the comparison."""
    import copy

    import onnx_ir as ir
    import onnxscript.optimizer as oo
    from onnx_ir.passes.common import (
        ClearMetadataAndDocStringPass,
        DeduplicateInitializersPass,
        IdentityEliminationPass,
        RemoveUnusedNodesPass,
    )

    proto = copy.deepcopy(proto)
    if which == "onnxscript.optimizer.optimize":
        return oo.optimize(proto)
    if which == "  ... with size limits lifted":
        return oo.optimize(proto, input_size_limit=1 << 40, output_size_limit=1 << 40)
    if which == "onnx_ir dedup + identity + clear":
        model = ir.serde.deserialize_model(proto)
        for p in (IdentityEliminationPass(), DeduplicateInitializersPass(1 << 40), RemoveUnusedNodesPass(),
                  ClearMetadataAndDocStringPass()):  # fmt: skip
            p(model)
        return ir.serde.serialize_model(model)
    if which == "share_weights":
        share_weights(proto)
    return proto


def _ort_optimized(path: Path):
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(path.with_suffix(".ort.onnx"))
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(so.optimized_model_filepath)


TOOL_ROWS = ("raw export", "onnxscript.optimizer.optimize", "  ... with size limits lifted",
             "onnxruntime graph optimisation", "onnx_ir dedup + identity + clear", "share_weights")  # fmt: skip


def tool_sizes(workdir: Path, widths=(192, 48)) -> list[dict]:
    """File size (MB) after each ONNX tool, for each exporter and width (see the module doc)."""
    import contextlib
    import io
    import warnings

    import onnx

    exporters = {"dynamo": dict(dynamo=True), "dynamo (no opt)": dict(dynamo=True, optimize=False),
                 "torchscript": dict(dynamo=False, do_constant_folding=True)}  # fmt: skip
    rows = []
    for width in widths:
        teacher = noisy(minivit.create_model("vit_small_patch16_224", img_size=32, patch_size=8, depth=12,
                                             embed_dim=width, num_heads=3, num_classes=10), 6)  # fmt: skip
        student = noisy(minivit.multiplex(teacher, share=12), 7)
        x = torch.randn(infer_input_size(student))
        for name, kw in exporters.items():
            path = workdir / f"tools-{width}-{name.split()[0]}-{len(kw)}.onnx"
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(student, (x,), str(path), input_names=["input"], output_names=["logits"], **kw)
            raw = onnx.load(str(path))
            row = {"width": width, "exporter": name, "model_mb": to_mb(tensor_bytes(student, persistent_only=False))}
            for which in TOOL_ROWS:
                proto = _ort_optimized(path) if which.startswith("onnxruntime") else _tool_passes(raw, which)
                row[which] = to_mb(len(proto.SerializeToString()))
                row[which + " (unique weight MB)"] = to_mb(weight_stats(proto)["unique_initializer_bytes"])
            rows.append(row)
    cols = [f"{r['exporter']} w{r['width']}" for r in rows]
    print("\nONNX file MB (10^6 bytes) after each tool, share-12 student, 12 layers, 32x32 input\n")
    print("| step | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    print("| model's own tensors | " + " | ".join(f"{r['model_mb']:.3f}" for r in rows) + " |")
    for which in TOOL_ROWS:
        print(f"| {which.strip()} | " + " | ".join(f"{r[which]:.3f}" for r in rows) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model-dir", type=Path, nargs="+", default=[], help="trained model folder(s): measure the int8 accuracy drop"
    )
    p.add_argument("--quick-train", type=int, metavar="EPOCHS", help="train a small Mini-DeiT first (CPU)")
    p.add_argument("--data", default=str(SHARED_FMNIST) if SHARED_FMNIST.is_dir() else "fashion-mnist")
    p.add_argument("--skip-sizes", action="store_true", help="only the accuracy part")
    p.add_argument("--tools", action="store_true", help="only the ONNX tool comparison (small models)")
    p.add_argument("--json", type=Path, help="also write all figures to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    np.set_printoptions(precision=4)
    out: dict = {"torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="minivit-export-") as tmp:
        work = Path(tmp)
        if args.tools:
            out["onnx_tools"] = tool_sizes(work)
        elif not args.skip_sizes:
            rows, chains = onnx_sizes(work)
            print_sizes(rows, chains)
            out.update(onnx=rows, state_dict_chain=chains)
        model_dirs = list(args.model_dir)
        if args.quick_train:
            model_dirs.append(quick_train(args.data, args.quick_train, work / "quick-mini-deit"))
        if not model_dirs:
            if not args.tools:
                print("\nint8 accuracy on Fashion-MNIST: skipped (pass --model-dir DIR with a trained model folder, "
                      "or --quick-train 1)")
        else:
            print_accuracy_header()
            out["fashion_mnist_int8"] = [int8_accuracy(d, args.data, work, i) for i, d in enumerate(model_dirs)]
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
