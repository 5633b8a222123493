"""Gradient-norm recording, per-layer CKA between models, and the report/analyze/export commands."""

import json

import torch
import torch.nn.functional as F

import minivit
from minivit.analysis.compare import layer_cka
from minivit.analysis.grad_norms import GradNormRecorder
from minivit.cli.main import main as cli_main


def main(argv) -> int:
    try:
        return cli_main(argv)
    except SystemExit as e:
        return e.code


def tiny_teacher(depth=4):
    torch.manual_seed(0)
    return minivit.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=depth, embed_dim=32,
                                num_heads=2, num_classes=5)


def grad_norms(model, x, y):
    rec = GradNormRecorder(model, every=1)
    assert rec.arm(0)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return torch.tensor(rec.collect(0))


def test_grad_norms_split_shared_weights_by_layer():
    teacher = tiny_teacher()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 5, (6,))
    plain = grad_norms(teacher, x, y)
    # share=1 without transforms: the per-call contributions are exactly each block's own gradient
    student = minivit.multiplex(teacher, share=1, transforms=False)
    assert torch.allclose(grad_norms(student, x, y), plain, rtol=1e-4)
    # share=2: per-layer contributions of a group add up (as vectors) to the shared .grad
    shared = minivit.multiplex(teacher, share=2, transforms=False)
    norms = grad_norms(shared, x, y)
    assert norms.shape == (4,) and (norms > 0).all()
    g = shared.blocks[0].shared.attn.qkv.weight.grad.norm()
    assert g <= norms[0] + norms[1] + 1e-6  # triangle inequality on the two layers' contributions
    # only armed steps cost anything
    rec = GradNormRecorder(shared, every=5)
    assert not rec.arm(3) and rec.collect(3) is None


def test_layer_cka_is_one_for_the_same_model_and_shapes_follow_depth():
    teacher = tiny_teacher().eval()
    batches = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    same = layer_cka(teacher, minivit.multiplex(teacher, share=1), batches)
    assert same.shape == (4, 4)
    assert torch.allclose(torch.tensor(same).diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-6)
    single = layer_cka(teacher, minivit.multiplex(teacher, share=4), batches)
    assert single.shape == (4, 4) and single[0, 0] > 0.99  # first layer unchanged (it is the shared block)


def test_train_compress_report_analyze_export_end_to_end(tmp_path, capsys):
    t, s = tmp_path / "t", tmp_path / "s"
    common = ["--data", "digits", "--epochs", "1", "--no-progress", "--train-limit", "300", "--val-limit", "100"]
    assert main(["train", "--model", "vit_tiny_patch16_224", "--model-args", "img_size=16", "patch_size=4",
                 "depth=4", "embed_dim=32", "num_heads=2", "--output", str(t), "--log-grad-norms", "2", *common]) == 0
    assert main(["compress", "--teacher", str(t), "--share", "2", "--output", str(s), "--log-grad-norms", "2",
                 *common]) == 0
    rows = [json.loads(line) for line in (s / "grad_norms.jsonl").read_text().splitlines()]
    assert rows and all(len(r["grad_norms"]) == 4 for r in rows)
    assert main(["report", str(s)]) == 0
    assert (s / "report.md").is_file() and (s / "curves_top1.png").stat().st_size > 1000
    assert (s / "grad_norms_per_layer.png").is_file()
    assert main(["analyze", "--teacher", str(t), "--student", str(s), "--data", "digits", "--output",
                 str(tmp_path / "an"), "--batches", "2", "--batch-size", "32"]) == 0
    summary = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert len(summary["cka_per_layer"]) == 4 and summary["table"][1]["params_ratio"] < 0.6
    assert main(["export", "--model", str(s), "--format", "torchscript", "--output", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pt").is_file()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err


def test_the_package_exports_its_public_names():
    import minivit.analysis as analysis
    from minivit.analysis import GradNormLogger, MinibatchCKA, analyze, layer_cka, linear_cka, model_row, write_report

    assert layer_cka is analysis.compare.layer_cka and linear_cka is analysis.cka.linear_cka
    assert all(callable(f) for f in (GradNormLogger, MinibatchCKA, analyze, model_row, write_report))
    assert set(analysis.__all__) <= set(dir(analysis))
    for name in analysis.__all__:
        assert getattr(analysis, name) is not None
    x = torch.randn(16, 8, dtype=torch.float64)
    assert abs(linear_cka(x, 2 * x) - 1.0) < 1e-12


def test_model_row_uses_one_unit_and_counts_shared_weights_once():
    from minivit.analysis import model_row
    from minivit.measure import MB, count_parameters, tensor_bytes

    student = minivit.multiplex(tiny_teacher(), share=4)
    row = model_row("s", student, (1, 3, 16, 16), latency_runs=1)
    assert row["params"] == count_parameters(student) < count_parameters(tiny_teacher())
    assert row["size_mb"] == round(tensor_bytes(student) / MB, 3) and MB == 10**6
    assert row["gflops"] > 0 and row["latency_ms"] > 0
