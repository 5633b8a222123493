"""minivit.export: ONNX keeps shared weights shared, TorchScript, int8, run_export and atomic writes."""

import argparse

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import minivit
from minivit.errors import CheckpointError, ConfigError, MinivitError
from minivit.export import (
    add_export_arguments,
    export_from_args,
    export_onnx,
    export_safetensors,
    export_torchscript,
    quantize_dynamic_int8,
    run_export,
    share_weights,
    size_report,
    state_dict_bytes,
    weight_stats,
)
from minivit.measure import count_parameters, infer_input_size

DEPTH, WIDTH, HEADS = 8, 64, 4


def tiny_vit(depth=DEPTH, embed_dim=WIDTH, num_heads=HEADS, seed=0):
    torch.manual_seed(seed)
    m = minivit.create_model(
        "vit_small_patch16_224", img_size=32, patch_size=8, depth=depth, embed_dim=embed_dim, num_heads=num_heads,
        num_classes=10,
    ).eval()
    with torch.no_grad():  # every layer (norms included) different, as in a trained model
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def perturbed(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():  # per-layer transforms / iRPE tables away from their identical initial values
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def big_matrices(path):
    """Shapes of the 2-D initializers with at least WIDTH * WIDTH entries (the blocks' Linear weights)."""
    m = onnx.load(str(path))
    shapes = [tuple(t.dims) for t in m.graph.initializer]
    return sorted(s for s in shapes if len(s) == 2 and s[0] * s[1] >= WIDTH * WIDTH)


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Teacher (depth 8), its single-layer student (share 8) and a share-4 student with iRPE, in ONNX."""
    out = tmp_path_factory.mktemp("onnx")
    teacher = tiny_vit()
    models = {
        "teacher": teacher,
        "share8": perturbed(minivit.multiplex(teacher, share=DEPTH)),
        "share4": perturbed(minivit.multiplex(teacher, share=4, irpe=True)),
    }
    infos = {name: export_onnx(m, out / f"{name}.onnx", (1, 3, 32, 32)) for name, m in models.items()}
    return models, infos


def test_onnx_matches_pytorch_in_onnxruntime(exported):
    models, infos = exported
    for name, info in infos.items():
        assert info["exporter"] == "dynamo" and info["fallback_reason"] is None, name
        assert info["max_abs_diff"] < 1e-4 and info["batches"] == [1, 3]
        assert info["opset"] >= 17
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = models["share4"](x).numpy()
    assert np.abs(ort_run(infos["share4"]["path"], x) - ref).max() < 1e-4


def test_single_layer_file_is_several_times_smaller(exported):
    _, infos = exported
    t, s = infos["teacher"], infos["share8"]
    ratio = t["bytes"] / s["bytes"]
    assert ratio > 4.5, ratio  # measured 5.5 (per-layer norms/transforms, embeddings and head stay)
    for info in infos.values():  # no per-layer copies: the file holds what the model holds
        assert info["weights_shared"]
        assert info["unique_initializer_bytes"] <= 1.01 * info["model_tensor_bytes"]
        assert info["num_initializers"] == info["unique_initializers"]


def test_initializer_count_reflects_sharing(exported):
    _, infos = exported
    # qkv, proj, fc1, fc2 per stored block: 8 blocks, 1 block, 2 blocks
    assert len(big_matrices(infos["teacher"]["path"])) == 4 * DEPTH
    assert len(big_matrices(infos["share8"]["path"])) == 4
    assert len(big_matrices(infos["share4"]["path"])) == 4 * 2
    assert infos["share4"]["num_initializers"] < infos["teacher"]["num_initializers"]


def test_dynamic_batch(exported):
    models, infos = exported
    sess = ort.InferenceSession(infos["share4"]["path"], providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    for b in (1, 3):
        x = torch.randn(b, 3, 32, 32)
        with torch.no_grad():
            ref = models["share4"](x).numpy()
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert out.shape == (b, 10) and np.abs(out - ref).max() < 1e-4


def test_share_weights_pass_merges_copies_and_folds_transposes():
    """The post-pass alone, on a hand-made graph with a per-call-site transposed copy of a weight."""
    w = np.random.default_rng(0).standard_normal((6, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["X", "Wt"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "W_copy"], ["h2"]),  # the same weight, folded at this call site
        helper.make_node("Identity", ["W_copy"], ["W_again"]),  # the TorchScript exporter's reuse
        helper.make_node("MatMul", ["h2", "W_again"], ["Y"]),
    ]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w.T.copy(), "W_copy")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [2, 6])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # IR 8: any onnxruntime
    x = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    assert weight_stats(model)["unique_initializers"] == 2  # W and its transpose differ by content
    assert share_weights(model) == {"bypassed_identities": 1, "folded_transposes": 1, "deduplicated": 1}
    onnx.checker.check_model(model)
    stats = weight_stats(model)
    assert stats["num_initializers"] == 1 and stats["initializer_bytes"] == w.nbytes
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Tanh", "MatMul", "MatMul"]
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    np.testing.assert_array_equal(before[0], after[0])


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_roundtrip(tmp_path):
    model = perturbed(minivit.multiplex(tiny_vit(depth=4, embed_dim=48, num_heads=3), share=2, irpe=True))
    info = export_torchscript(model, tmp_path / "m.pt")
    assert info["max_abs_diff"] < 1e-5 and info["input_size"] == [1, 3, 32, 32]
    loaded = torch.jit.load(info["path"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_int8_quantisation_is_smaller_close_and_keeps_sharing(tmp_path):
    teacher = tiny_vit(depth=4, embed_dim=64, num_heads=4)
    student = minivit.multiplex(teacher, share=2)
    q = quantize_dynamic_int8(student)
    assert q is not student and isinstance(student.blocks[0].shared.attn.qkv, nn.Linear)  # input untouched
    qlinears = [m for m in q.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(qlinears) == 2 * 4 + 1  # 2 shared blocks x (qkv, proj, fc1, fc2) + head
    assert count_parameters(q) == count_parameters(student)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, out = student(x), q(x)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()  # measured 0.06 (per-tensor scales, random weights)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75
    assert state_dict_bytes(q) < 0.5 * state_dict_bytes(student)
    report = size_report(teacher, student, q)
    r = report["ratios"]
    assert r["teacher/student_int8"] == pytest.approx(r["teacher/student"] * r["student/student_int8"], rel=1e-2)
    assert r["teacher/student"] > 1.8 and r["student/student_int8"] > 2
    # an aliased Linear (one module under two names) is quantised once and stays one module
    lin = nn.Linear(8, 8)
    aliased = quantize_dynamic_int8(nn.Sequential(lin, nn.ReLU(), lin))
    assert aliased[0] is aliased[2] and isinstance(aliased[0], torch.ao.nn.quantized.dynamic.Linear)
    # and it traces to TorchScript
    info = export_torchscript(q, tmp_path / "q.pt")
    assert info["int8"] and info["max_abs_diff"] < 1e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model") / "mini"
    model = minivit.create_model(
        "mini_deit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=4, embed_dim=48, num_heads=3
    )
    minivit.save_pretrained(perturbed(model), d)
    return d


def test_run_export_writes_the_expected_files(model_dir, tmp_path):
    model = minivit.from_pretrained(model_dir)
    assert infer_input_size(model) == (1, 3, 32, 32)
    onnx_info = run_export(model_dir, "onnx", tmp_path / "out" / "m.onnx", exporter="torchscript")
    assert onnx_info["path"] == str(tmp_path / "out" / "m.onnx") and onnx_info["input_size"] == [1, 3, 32, 32]
    assert onnx_info["max_abs_diff"] < 1e-4 and onnx_info["bytes"] == (tmp_path / "out" / "m.onnx").stat().st_size
    int8 = run_export(model_dir, "onnx", tmp_path / "out", int8=True, exporter="torchscript")
    assert int8["path"] == str(tmp_path / "out" / "model.int8.onnx") and int8["int8"]
    assert int8["bytes"] < onnx_info["bytes"] and int8["max_abs_diff"] < 0.1 * int8["max_abs_ref"]
    assert int8["initializer_bytes"] < 0.5 * onnx_info["initializer_bytes"]
    inits = onnx.load(int8["path"]).graph.initializer
    int8_weights = [t for t in inits if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_weights) == 2 * 4 + 1  # each shared Linear quantised once (+ head)
    ts = run_export(model_dir, "torchscript", int8=True)
    assert ts["path"] == str(model_dir / "export" / "model.int8.torchscript.pt")
    assert ts["state_dict_bytes"] < ts["fp32_state_dict_bytes"] and ts["max_abs_diff_vs_fp32"] < 0.5
    st = run_export(model_dir, "safetensors", tmp_path / "st")
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["config.json", "model.safetensors"]
    assert st["files"] and st["bytes"] > 0
    # nothing but the finished files
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.onnx", "model.int8.onnx"]
    assert sorted(p.name for p in (model_dir / "export").iterdir()) == ["model.int8.torchscript.pt"]


def test_cli_arguments_drive_run_export(model_dir, tmp_path):
    parser = add_export_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--model", str(model_dir), "--format", "torchscript", "--output", str(tmp_path / "a.pt"), "--input-size",
         "2", "3", "32", "32"]
    )
    info = export_from_args(args)
    assert info["path"] == str(tmp_path / "a.pt") and info["input_size"] == [2, 3, 32, 32]
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", str(model_dir), "--format", "tflite"])


@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_safetensors_round_trip_is_exact_and_small(model_dir, tmp_path, per_channel):
    """``--format safetensors --int8``: plain int8 tensors that load back into the exporter's own int8 model."""
    from safetensors import safe_open

    from minivit.export import int8_bytes, load_int8_safetensors, safetensors_bytes

    model = minivit.from_pretrained(model_dir)
    info = run_export(model_dir, "safetensors", int8=True, per_channel=per_channel)
    out = model_dir / "export" / "safetensors-int8"
    assert info["path"] == str(out) and info["int8"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.int8.safetensors"]
    assert info["weights_bytes"] == (out / "model.int8.safetensors").stat().st_size == int8_bytes(model, per_channel)
    assert info["weights_bytes"] < 0.5 * safetensors_bytes(model)  # (norms, iRPE tables, head mixing stay fp32)
    assert safetensors_bytes(model) == (model_dir / "model.safetensors").stat().st_size
    with safe_open(out / "model.int8.safetensors", "pt") as f:  # same-shaped tensors of the layers stacked
        assert f.metadata()["packed"] == "1"
        qkv = f.get_tensor("blocks.#.shared.attn.qkv.weight")  # the 2 groups' shared blocks
        scale = f.get_tensor("blocks.#.shared.attn.qkv.weight_scale")
        norms = f.get_tensor("blocks.1.layers.#.norm1.weight")  # the 2 layers of group 1
    assert qkv.dtype == torch.int8 and qkv.shape == (2, 144, 48)
    assert scale.shape == ((2, 144) if per_channel else (2,))
    assert norms.shape == (2, 48) and torch.equal(norms[1], model.state_dict()["blocks.1.layers.1.norm1.weight"])
    loaded = load_int8_safetensors(out)
    reference = quantize_dynamic_int8(model, per_channel=per_channel)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    assert loaded.pretrained_cfg["mean"] == model.pretrained_cfg["mean"]
    # a file written before stacking (one tensor per layer, no "packed" metadata) loads the same
    from safetensors.torch import load_file, save_file

    from minivit.export.int8 import unpack

    save_file(unpack(load_file(out / "model.int8.safetensors")), out / "model.int8.safetensors", {"format": "pt"})
    with torch.no_grad():
        assert torch.equal(load_int8_safetensors(out)(x), reference(x))
    (out / "model.int8.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_int8_safetensors(out)
    with pytest.raises(CheckpointError, match="holds no int8 model"):
        load_int8_safetensors(model_dir)


def test_run_export_errors_are_clear(model_dir, tmp_path):
    with pytest.raises(CheckpointError, match="model directory not found"):
        run_export(tmp_path / "nope", "onnx")
    with pytest.raises(ConfigError, match="unknown export format 'tflite'.*onnx, torchscript, safetensors"):
        run_export(model_dir, "tflite")
    with pytest.raises(ConfigError, match="int8-quantised model cannot be saved as safetensors"):
        export_safetensors(quantize_dynamic_int8(minivit.from_pretrained(model_dir)), tmp_path / "q")
    with pytest.raises(ConfigError, match="input_size must be"):
        run_export(model_dir, "torchscript", input_size=(1, 2, 3, 4, 5))
    with pytest.raises(ConfigError, match="unknown ONNX exporter"):
        export_onnx(nn.Linear(2, 2), tmp_path / "x.onnx", (1, 2), exporter="tf")
    broken = minivit.from_pretrained(model_dir)
    with torch.no_grad():
        next(broken.parameters())[0].fill_(float("nan"))
    minivit.save_pretrained(broken, tmp_path / "nan")
    with pytest.raises(CheckpointError, match="non-finite weights"):  # diverged training: no file that outputs NaN
        run_export(tmp_path / "nan", "onnx")
    assert not (tmp_path / "nan" / "export").exists()


class Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_nothing_half_written_on_failure(tmp_path, monkeypatch):
    model = tiny_vit(depth=2, embed_dim=48, num_heads=3).train()
    # the output path is a folder
    (tmp_path / "taken.onnx").mkdir()
    with pytest.raises(MinivitError, match="is a directory"):
        export_onnx(model, tmp_path / "taken.onnx")
    # the parent "folder" is a file
    (tmp_path / "file").write_text("x")
    with pytest.raises(MinivitError, match="cannot write"):
        export_onnx(model, tmp_path / "file" / "m.onnx")
    with pytest.raises(MinivitError, match="cannot write"):
        export_torchscript(model, tmp_path / "file" / "m.pt")
    # every exporter fails
    with pytest.raises(MinivitError, match="ONNX export failed.*dynamo.*torchscript"):
        export_onnx(Broken(), tmp_path / "broken.onnx", (1, 3, 8, 8))
    with pytest.raises(MinivitError, match="TorchScript tracing failed: boom"):
        export_torchscript(Broken(), tmp_path / "broken.pt", (1, 3, 8, 8))
    # the export works but verification fails
    import minivit.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "verify_onnx", lambda *a, **k: {"max_abs_diff": 1.0, "max_abs_ref": 1.0})
    with pytest.raises(MinivitError, match="differs from PyTorch"):
        export_onnx(model, tmp_path / "bad.onnx", exporter="torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken.onnx"]
    assert list((tmp_path / "taken.onnx").iterdir()) == []
    assert model.training  # the caller's mode is restored


def test_fold_deltas_export_runs_full_weights_and_is_checked(tmp_path):
    """``--fold-deltas``: the ONNX graph of a relaxed-sharing student with one product per map (its teacher's
    operations), verified against PyTorch; the default export keeps the deltas factorised (fewer bytes)."""
    teacher = tiny_vit(depth=4)
    student = perturbed(minivit.multiplex(teacher, share=4, delta_rank=2, transforms=False))
    d = tmp_path / "relaxed"
    minivit.save_pretrained(student, d)
    plain = run_export(d, "onnx", tmp_path / "plain.onnx", exporter="torchscript")
    folded = run_export(d, "onnx", tmp_path / "folded.onnx", exporter="torchscript", fold_deltas=True)
    assert folded["max_abs_diff"] < 1e-4 and plain["max_abs_diff"] < 1e-4
    matmuls = [sum(n.op_type in ("MatMul", "Gemm") for n in onnx.load(str(p)).graph.node)
               for p in (tmp_path / "plain.onnx", tmp_path / "folded.onnx")]
    assert matmuls[1] < matmuls[0]  # 4 maps x 4 layers x 2 delta products fewer
    assert folded["bytes"] > 2 * plain["bytes"]  # each layer stores its maps in full
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(ort_run(tmp_path / "folded.onnx", x), student(x).numpy(), atol=1e-4)
    with pytest.raises(ConfigError, match="no relaxed-sharing deltas"):
        run_export(_saved_plain(tmp_path, teacher), "onnx", fold_deltas=True)
    with pytest.raises(ConfigError, match="not safetensors"):
        run_export(d, "safetensors", tmp_path / "st", fold_deltas=True)
    assert not (tmp_path / "st").exists()


def test_int8_torchscript_with_folded_deltas_runs_one_int8_product_per_map(tmp_path):
    """``--format torchscript --int8 --fold-deltas``: quantised, then folded (int8 factors and shared weight
    summed and quantised again per layer); close to the factorised int8 file and to the float student."""
    student = perturbed(minivit.multiplex(tiny_vit(depth=4), share=4, delta_rank=2, transforms=False))
    d = tmp_path / "relaxed"
    minivit.save_pretrained(student, d)
    plain = run_export(d, "torchscript", tmp_path / "plain.pt", int8=True)
    folded = run_export(d, "torchscript", tmp_path / "folded.pt", int8=True, fold_deltas=True)
    x = torch.randn(2, 3, 32, 32)
    runs = [torch.jit.load(str(tmp_path / f)) for f in ("plain.pt", "folded.pt")]
    with torch.no_grad():
        ref, outs = student(x), [m(x) for m in runs]
    assert all((o - ref).abs().max() <= 0.1 * ref.abs().max() for o in outs)  # int8 of a tiny random model
    assert folded["max_abs_diff_vs_fp32"] <= 0.1 * float(ref.abs().max())
    products = [str(m.inlined_graph).count("linear_dynamic") for m in runs]
    assert products[1] == products[0] - 2 * 4 * 4  # two delta products fewer per map, 4 maps x 4 layers
    assert folded["bytes"] > plain["bytes"]  # each layer's maps stored in full (int8)
    # the file holds what runs: the folded maps, not the factors they were made from
    names = [[n for n, _ in m.named_modules()] for m in runs]
    assert any("up_proj" in n for n in names[0]) and not any("up_proj" in n or "down_proj" in n for n in names[1])


def _saved_plain(tmp_path, teacher):
    d = tmp_path / "plain_model"
    minivit.save_pretrained(minivit.multiplex(teacher, share=2), d)
    return d


def test_default_onnx_export_of_deltas_is_small_and_folds_when_loaded(tmp_path):
    """The default export writes the deltas' merge on the stored factors: the file holds no per-layer weight
    copies, and onnxruntime's constant folding at load leaves one product per map (the folded graph's count)."""
    teacher = tiny_vit(depth=4)
    student = perturbed(minivit.multiplex(teacher, share=4, delta_rank=2, transforms=False))
    info = export_onnx(student, tmp_path / "s.onnx", (1, 3, 32, 32))
    assert info["weights_shared"] and info["max_abs_diff"] < 1e-4
    assert info["exporter"] == "torchscript" and "duplicated" in info["fallback_reason"]
    folded = export_onnx(minivit.fold_deltas(student), tmp_path / "f.onnx", (1, 3, 32, 32), exporter="torchscript")
    assert info["bytes"] < 0.5 * folded["bytes"]

    def products_after_loading(path):
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
        return sum(n.op_type in ("MatMul", "Gemm", "FusedMatMul") for n in graph.node)

    assert products_after_loading(tmp_path / "s.onnx") == products_after_loading(tmp_path / "f.onnx")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(ort_run(tmp_path / "s.onnx", x), student(x).numpy(), atol=1e-4)


def test_int8_packing_stacks_only_complete_same_shaped_runs_and_inverts_exactly():
    from minivit.export.int8 import pack, unpack

    t = {
        "a.0.w": torch.ones(2, 3), "a.1.w": torch.zeros(2, 3), "a.2.w": torch.full((2, 3), 2.0),  # stacked
        "b.0.w": torch.ones(2), "b.1.w": torch.ones(3),  # shapes differ: kept apart
        "c.0.w": torch.ones(1), "c.2.w": torch.ones(1),  # index 1 missing: kept apart
        "d.0.w": torch.ones(1),  # alone
        "e.1.f.0.s": torch.tensor(1.0), "e.1.f.1.s": torch.tensor(2.0),  # the last index is the one stacked
        "head.weight": torch.ones(4),
    }  # fmt: skip
    packed = pack(t)
    assert set(packed) == {"a.#.w", "b.0.w", "b.1.w", "c.0.w", "c.2.w", "d.0.w", "e.1.f.#.s", "head.weight"}
    assert packed["a.#.w"].shape == (3, 2, 3) and packed["e.1.f.#.s"].tolist() == [1.0, 2.0]
    back = unpack(packed)
    assert set(back) == set(t) and all(torch.equal(back[k], v) for k, v in t.items())
