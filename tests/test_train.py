"""Objectives, the training engine, checkpoints and exact resume (tiny models on digits)."""

import errno
import json

import pytest
import torch

import minivit
from minivit.data import build_dataset
from minivit.distill import FeatureCapture
from minivit.distill.losses import attention_relation_loss, hard_cross_entropy, hidden_relation_loss, soft_cross_entropy
from minivit.distill.objective import DistillationObjective, SupervisedObjective
from minivit.errors import CheckpointError, ConfigError
from minivit.train import TrainConfig, TrainingError, fit
from minivit.train import state as state_mod
from minivit.train.data import EpochBatchSampler, WithTeacherLogits
from minivit.train.state import load_checkpoint

TINY = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, depth=2, embed_dim=32, num_heads=2, mlp_ratio=2.0)


def tiny_vit(seed=0, **kw):
    torch.manual_seed(seed)
    return minivit.create_model("vit_small_patch16_224", **{**TINY, **kw})


def pair(depth=4):
    teacher = tiny_vit(depth=depth).eval()
    with torch.no_grad():  # make layers differ, as in a trained teacher
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return minivit.multiplex(teacher, share=2), teacher


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits", "train", 8, 1, limit=256), build_dataset("digits", "val", 8, 1, limit=128)


def hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


# --------------------------------------------------------------------------- objectives


def test_distillation_terms_equal_direct_loss_calls():
    student, teacher = pair()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    obj = DistillationObjective(
        student, teacher, alpha=0.3, temperature=2.0, beta=0.7, gamma=1.5, student_layers=[1, 3], teacher_layers=[0, 3]
    )
    out = obj((x, y))
    obj.remove_hooks()
    assert set(out) == {"loss", "ce", "kd", "attn", "hidden"}
    with (
        FeatureCapture(student, [1, 3], qkv=True, hidden=True) as cs,
        FeatureCapture(teacher, [0, 3], qkv=True, hidden=True) as ct,
    ):
        zs = student(x)
        with torch.no_grad():
            zt = teacher(x)
        want = {
            "ce": 0.3 * hard_cross_entropy(zs, y),
            "kd": 0.7 * soft_cross_entropy(zs, zt, 2.0),
            "attn": 0.7 * attention_relation_loss(cs.qkv, ct.qkv),
            "hidden": 1.5 * hidden_relation_loss(cs.hidden, ct.hidden),
        }
    for k, v in want.items():
        torch.testing.assert_close(out[k], v.detach(), msg=k)
    torch.testing.assert_close(out["loss"].detach(), sum(want.values()).detach())
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.head.weight.grad is not None


def test_default_weights_and_mapping():
    student, teacher = pair(depth=4)
    obj = DistillationObjective(student, teacher)
    assert (obj.alpha, obj.temperature, obj.beta, obj.gamma) == (0.0, 1.0, 1.0, pytest.approx(4.9))
    assert obj.pairs == [(3, 3)]  # the last blocks
    out = obj((torch.randn(2, 1, 8, 8), torch.tensor([1, 2])))
    assert set(out) == {"loss", "kd", "attn", "hidden"}


def test_hooks_only_for_enabled_terms():
    student, teacher = pair()
    assert hook_count(student) == hook_count(teacher) == 0
    obj = DistillationObjective(student, teacher, beta=0, gamma=0)
    assert hook_count(student) == hook_count(teacher) == 0 and obj.pairs == []
    obj = DistillationObjective(student, teacher, beta=1, gamma=0, num_pairs=2)
    assert hook_count(student) == hook_count(teacher) == 2  # qkv taps only
    obj.remove_hooks()
    obj = DistillationObjective(student, teacher, beta=1, gamma=1, num_pairs=2)
    assert hook_count(student) == hook_count(teacher) == 4
    obj.remove_hooks()
    assert hook_count(student) == hook_count(teacher) == 0


def test_teacher_is_frozen_hidden_and_stays_in_eval():
    student, teacher = pair()
    obj = DistillationObjective(student, teacher)
    assert not any(k.startswith("teacher") for k in obj.state_dict())
    ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in ids for p in obj.parameters())
    obj.train()
    assert student.training and not teacher.training
    obj.to(torch.float64)  # .to() moves the unregistered teacher as well
    assert next(teacher.parameters()).dtype == torch.float64
    obj.remove_hooks()


def test_cached_logits_skip_the_teacher():
    student, teacher = pair()
    obj = DistillationObjective(student, teacher, beta=0, gamma=0)
    teacher.forward = lambda *_: (_ for _ in ()).throw(AssertionError("teacher ran"))
    x, y, cached = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)), torch.randn(4, 10)
    out = obj((x, y, cached))
    torch.testing.assert_close(out["kd"], soft_cross_entropy(student(x), cached).detach())


def test_supervised_objective_and_bad_weights():
    model = tiny_vit()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    out = SupervisedObjective(model, label_smoothing=0.1)((x, y))
    torch.testing.assert_close(out["loss"], torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1))
    soft = torch.softmax(torch.randn(4, 10), -1)
    torch.testing.assert_close(SupervisedObjective(model)((x, soft))["loss"], hard_cross_entropy(model(x), soft))
    student, teacher = pair()
    with pytest.raises(ConfigError, match="weight 0"):
        DistillationObjective(student, teacher, logits=False, beta=0, gamma=0)
    with pytest.raises(ConfigError, match="alpha"):
        DistillationObjective(student, teacher, alpha=2)


# --------------------------------------------------------------------------- data order


def test_batches_are_a_function_of_seed_epoch_and_rank():
    one = EpochBatchSampler(50, 8, seed=3)
    one.set_epoch(2)
    batches = [list(b) for b in one]
    again = EpochBatchSampler(50, 8, seed=3)
    again.set_epoch(2, skip=3)
    assert [list(b) for b in again] == batches[3:]
    one.set_epoch(1)
    assert [list(b) for b in one] != batches
    # two processes with half the batch see exactly the global batches of one process
    ranks = [EpochBatchSampler(50, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    per_rank = [list(r) for r in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(batches)
    for b, (r0, r1) in enumerate(zip(*per_rank)):
        assert sorted(r0 + r1) == sorted(batches[b]) or b == len(batches) - 1  # last one padded


# --------------------------------------------------------------------------- engine


def cfg(**kw):
    base = dict(epochs=2, batch_size=32, lr=3e-3, warmup_epochs=0.5, progress=False)
    return TrainConfig(**{**base, **kw})


def test_fit_writes_metrics_and_checkpoints(tmp_path, digits):
    train, val = digits
    result = fit(SupervisedObjective(tiny_vit()), train, val, cfg(), tmp_path, log=None)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    rec = result["final"]
    assert {"train_loss", "train_ce", "val_top1", "val_top5", "img_per_s", "lr"} <= set(rec)
    assert result["history"][1]["train_loss"] < result["history"][0]["train_loss"]
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["batches_done"] == 0 and last["step"] == 16
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary files left


class Stop(Exception):
    pass


def _stop_at(step):
    def callback(ctx):
        if ctx.step == step:
            raise Stop

    return callback


def _run(tmp_path, name, train, val, callbacks=(), resume=False, **kw):
    torch.manual_seed(0)
    model = tiny_vit(drop_path_rate=0.2)  # drop-path and mixup exercise the torch and numpy RNGs
    c = cfg(mixup=0.4, label_smoothing=0.1, checkpoint_every=3, **kw)
    return model, fit(
        SupervisedObjective(model), train, val, c, tmp_path / name, callbacks=callbacks, resume=resume, log=None
    )


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path, digits):
    train, val = digits
    ref, ref_result = _run(tmp_path, "ref", train, val)
    with pytest.raises(Stop):  # dies in epoch 2, after the mid-epoch checkpoint of step 12
        _run(tmp_path, "cut", train, val, callbacks=[_stop_at(13)])
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 12
    model, result = _run(tmp_path, "cut", train, val, resume=True)
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    timing = ("img_per_s", "epoch_time_s")
    for got, want in zip(result["history"], ref_result["history"], strict=True):
        got, want = ({k: v for k, v in r.items() if k not in timing} for r in (got, want))
        assert got == pytest.approx(want, rel=1e-9)


def test_resume_refuses_a_changed_configuration(tmp_path, digits):
    train, val = digits
    fit(SupervisedObjective(tiny_vit()), train, val, cfg(epochs=1), tmp_path, run_config={"lr": 1}, log=None)
    with pytest.raises(ConfigError, match=r"different configuration \(lr: 1 -> 2\).*--force"):
        fit(SupervisedObjective(tiny_vit()), train, val, cfg(epochs=1), tmp_path, run_config={"lr": 2}, resume=True)
    r = fit(
        SupervisedObjective(tiny_vit()), train, val, cfg(epochs=2), tmp_path, run_config={"lr": 2}, resume=True,
        force=True, log=None,
    )  # fmt: skip
    assert [h["epoch"] for h in r["history"]] == [1, 2]


class NaNAfter(SupervisedObjective):
    def __init__(self, model, after):
        super().__init__(model)
        self.calls, self.after = 0, after

    def forward(self, batch):
        self.calls += 1
        out = super().forward(batch)
        if self.calls > self.after:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_stops_with_the_last_good_checkpoint_kept(tmp_path, digits):
    train, val = digits
    with pytest.raises(TrainingError, match="not finite at epoch 2.*last good checkpoint"):
        fit(NaNAfter(tiny_vit(), after=10), train, val, cfg(), tmp_path, log=None)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["objective"].values())


def test_checkpoint_write_failure_keeps_the_previous_one(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    state_mod.save_checkpoint(folder, {"epoch": 1})
    before = (folder / "last.pt").read_bytes()

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_mod.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="no space left.*previous version is intact"):
        state_mod.save_checkpoint(folder, {"epoch": 2})
    assert (folder / "last.pt").read_bytes() == before
    assert [p.name for p in folder.iterdir()] == ["last.pt"]


def test_rng_state_round_trip():
    import random

    import numpy as np

    s = state_mod.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1))
    state_mod.set_rng_state(s)
    assert (random.random(), np.random.rand(), torch.rand(1)) == a


def test_fit_from_cached_teacher_logits(tmp_path, digits):
    train, val = digits
    student, teacher = pair(depth=2)
    logits = torch.randn(len(train), 10)
    obj = DistillationObjective(student, teacher, beta=0, gamma=0)
    teacher.forward = lambda *_: (_ for _ in ()).throw(AssertionError("teacher ran"))
    r = fit(obj, WithTeacherLogits(train, logits), val, cfg(epochs=1), tmp_path, log=None)
    assert "train_kd" in r["final"]


# --------------------------------------------------------------------------- distillation config


def test_objective_from_a_config_equals_the_keyword_form():
    from minivit.distill import DistillConfig

    student, teacher = pair()
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,))
    config = DistillConfig(alpha=0.3, temperature=2.0, beta=0.7, gamma=1.5, student_layers="1,3", teacher_layers=[0, 3])
    a = DistillationObjective(student, teacher, config)
    out_a = a((x, y))
    a.remove_hooks()
    b = DistillationObjective(
        student, teacher, alpha=0.3, temperature=2.0, beta=0.7, gamma=1.5, student_layers=[1, 3], teacher_layers=[0, 3]
    )
    out_b = b((x, y))
    b.remove_hooks()
    assert a.pairs == b.pairs == [(1, 0), (3, 3)] and a.config == b.config
    for k in out_b:
        torch.testing.assert_close(out_a[k].detach(), out_b[k].detach(), msg=k)


def test_distill_config_terms_weights_and_legacy_keywords():
    from minivit.distill import DistillConfig, as_distill_config

    c = DistillConfig(distill="logits, attn", beta=2.0, gamma=3.0)
    assert c.distill == ("logits", "attn") and (c.kd_weight, c.attn_weight, c.hidden_weight) == (1.0, 2.0, 0.0)
    assert c.record()["gamma"] == 0.0 and c.record()["logits"] is True
    legacy = as_distill_config(logits=False, hidden="projection")
    assert legacy.distill == ("attn", "hidden") and legacy.hidden_loss == "projection" and legacy.kd_weight == 0
    assert as_distill_config({"alpha": 0.5}, beta=0).attn_weight == 0 and as_distill_config().alpha == 0
    for kwargs, pattern in [
        (dict(distill="logits,bogus"), "bogus"),
        (dict(distill=""), "unknown distillation term"),
        (dict(student_layers="1,x"), "bad layer list"),
        (dict(alpha=1.5), "alpha"),
        (dict(hidden_loss="gram"), "hidden loss"),
        (dict(num_pairs=0), "num_pairs"),
        (dict(distill="attn", beta=0), "weight 0"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            DistillConfig(**kwargs)
    with pytest.raises(ConfigError, match="unknown distillation option"):
        as_distill_config(betta=1)
    student, teacher = pair()
    obj = DistillationObjective(student, teacher, DistillConfig(distill="logits"), beta=5.0)
    assert obj.beta == 0 and obj.pairs == [] and hook_count(student) == 0


def test_teacher_logit_cache(tmp_path, digits):
    from minivit.distill import DistillConfig, cache_teacher_logits, check_cacheable

    train, _ = digits
    subset = torch.utils.data.Subset(train, range(40))
    teacher = tiny_vit().eval()
    path = tmp_path / "logits.pt"
    none = cache_teacher_logits(teacher, subset, path, {"t": 1}, batch_size=16, write=False)
    assert none.shape == (40, 10) and not path.exists()
    logits = cache_teacher_logits(teacher, subset, path, {"t": 1}, batch_size=16)
    torch.testing.assert_close(logits, none)
    with torch.no_grad():
        torch.testing.assert_close(logits[:3], teacher(torch.stack([subset[i][0] for i in range(3)])))
        teacher.head.weight.add_(1.0)
    torch.testing.assert_close(cache_teacher_logits(teacher, subset, path, {"t": 1}), logits)  # same key: kept
    assert not torch.allclose(cache_teacher_logits(teacher, subset, path, {"t": 2}), logits)  # new key: recomputed
    check_cacheable(DistillConfig(), augmented=True)  # no cache asked for: nothing to refuse
    with pytest.raises(ConfigError, match="--distill logits only"):
        check_cacheable(DistillConfig(cache_teacher_logits=True), augmented=False)
    with pytest.raises(ConfigError, match="without augmentation"):
        check_cacheable(DistillConfig(distill="logits", cache_teacher_logits=True), augmented=True)


def test_resume_reads_keys_missing_from_an_older_checkpoint_as_their_defaults(tmp_path, digits):
    train, val = digits
    fit(SupervisedObjective(tiny_vit()), train, val, cfg(epochs=1), tmp_path, run_config={"lr": 1}, log=None)
    r = fit(
        SupervisedObjective(tiny_vit()), train, val, cfg(epochs=1), tmp_path, run_config={"lr": 1, "new": 0},
        config_defaults={"new": 0}, resume=True, log=None,
    )  # fmt: skip
    assert [h["epoch"] for h in r["history"]] == [1]
    with pytest.raises(ConfigError, match=r"different configuration \(new: 0 -> 1\)"):
        fit(
            SupervisedObjective(tiny_vit()), train, val, cfg(epochs=1), tmp_path, run_config={"lr": 1, "new": 1},
            config_defaults={"new": 0}, resume=True, log=None,
        )  # fmt: skip


def test_no_function_of_the_loop_or_the_cli_is_longer_than_80_lines():
    import ast
    import inspect

    import minivit.cli.commands
    import minivit.cli.main
    import minivit.train.engine

    for module in (minivit.train.engine, minivit.cli.main, minivit.cli.commands):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 80, f"{module.__name__}.{node.name}"
