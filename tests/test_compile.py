"""Compiled inference (``minivit eval --compile``): a compiled student computes what the eager one does."""

from __future__ import annotations

import pytest
import torch

import minivit
from minivit.cli.commands import compiled, run_eval
from minivit.errors import ConfigError


def _student():
    torch.manual_seed(0)
    teacher = minivit.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=8, in_chans=1, depth=2, embed_dim=32, num_heads=2,
        num_classes=10,
    )
    student = minivit.multiplex(teacher, share=2).eval()
    with torch.no_grad():  # head mixing away from identity, as after training
        for name, p in student.named_parameters():
            if "_mix" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return student


def test_compiled_student_equals_eager_and_eval_reports_it(tmp_path):
    student = _student()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        eager = student(x)
        fast = compiled(student, x[:1])(x)
    assert ((fast - eager).abs().max() / eager.abs().max()).item() <= 1e-5
    minivit.save_pretrained(student, tmp_path / "s")
    plain = run_eval(str(tmp_path / "s"), "digits", val_limit=40, latency_runs=2)
    fused = run_eval(str(tmp_path / "s"), "digits", val_limit=40, latency_runs=2, compile=True)
    assert fused["compiled"] and not plain["compiled"]
    assert fused["top1"] == plain["top1"] and fused["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert fused["latency_ms"] > 0


def test_a_backend_that_cannot_build_is_one_line(monkeypatch):
    def broken(model, *a, **k):
        def run(x):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error\nlong compiler output")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(ConfigError, match=r"torch.compile failed: InductorError.*run without --compile") as e:
        compiled(_student(), torch.randn(1, 1, 16, 16))
    assert "long compiler output" not in str(e.value)
