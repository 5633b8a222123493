"""The byte-budget planner (minivit.budget) and `compress --budget`."""

import json

import pytest
import timm
import torch

import minivit
from minivit.budget import estimate_bytes, plan, start_error
from minivit.errors import ConfigError
from minivit.measure import tensor_bytes


def small_vit(depth=6):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, num_classes=5,
                             depth=depth, embed_dim=32, num_heads=2, mlp_ratio=2)


def small_swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=32, patch_size=2, window_size=4,
                             embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=5)


@pytest.mark.parametrize("make", [small_vit, small_swin])
@pytest.mark.parametrize("share,rank", [(1, 0), (2, 0), (2, 3), (2, 7)])
def test_estimated_bytes_are_the_students_bytes(make, share, rank):
    teacher = make()
    student = minivit.multiplex(teacher, share=share, delta_rank=rank)
    assert estimate_bytes(teacher, share, rank) == tensor_bytes(student)


@pytest.mark.parametrize("budget", [0.6, 0.45])
def test_plan_fits_the_budget_and_picks_the_closest_start(budget):
    teacher = small_vit()
    picked = plan(teacher, budget)
    student = minivit.multiplex(teacher, picked.spec)
    assert tensor_bytes(student) == picked.bytes <= budget * tensor_bytes(teacher)
    assert picked.spec.share in (1, 2, 3, 6)
    # no other fitting candidate, with the init the rule gives it, starts closer to the teacher
    best = start_error(teacher, picked.spec.share, picked.spec.delta_rank, picked.spec.init)
    for share in (2, 3, 6):
        if estimate_bytes(teacher, share, 0) <= budget * tensor_bytes(teacher):
            assert best <= start_error(teacher, share, 0, "first") + 1e-12  # without deltas: the first layer
    assert "share" in picked.describe() and "of the teacher's" in picked.describe()


def test_full_rank_starts_exactly_at_the_teacher():
    teacher = small_vit(depth=4)
    assert start_error(teacher, 2, 32, "mean") < 1e-20
    assert start_error(teacher, 1, 0) == 0.0
    assert start_error(teacher, 2, 0, "mean") < start_error(teacher, 2, 0, "first")


def test_a_budget_below_the_smallest_student_is_refused():
    with pytest.raises(ConfigError, match="no student fits"):
        plan(small_vit(), 0.01)
    with pytest.raises(ConfigError, match="budget"):
        plan(small_vit(), 1.5)


def test_compress_budget_picks_and_records_the_plan(tmp_path, capsys):
    from minivit.cli.main import main

    teacher = tmp_path / "teacher"
    args = ["img_size=8", "patch_size=2", "depth=4", "embed_dim=32", "num_heads=2", "mlp_ratio=2"]
    fast = ["--batch-size", "64", "--train-limit", "200", "--val-limit", "100", "--no-progress", "--epochs", "1"]
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "vit_small_patch16_224", "--model-args", *args, "--data", "digits",
              "--output", str(teacher), *fast])
    assert exc.value.code == 0
    out = tmp_path / "student"
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--teacher", str(teacher), "--budget", "0.4", "--data", "digits", "--output", str(out),
              *fast])
    assert exc.value.code == 0
    said = capsys.readouterr().out
    assert "budget 0.4 of the teacher's bytes: share" in said
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["delta_rank"] >= 0 and report["config"]["share"] in (2, 4)
    t, s = minivit.from_pretrained(teacher), minivit.from_pretrained(out)
    assert tensor_bytes(s) <= 0.4 * tensor_bytes(t)
    # --budget-int8: the student's int8 file holds the budget, so it is bigger than an fp32 budget allows
    from minivit.export import int8_bytes

    out8 = tmp_path / "student8"
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--teacher", str(teacher), "--budget", "0.3", "--budget-int8", "--data", "digits",
              "--output", str(out8), *fast])
    assert exc.value.code == 0
    assert "budget 0.3 of the teacher's bytes after int8: share" in capsys.readouterr().out
    assert json.loads((out8 / "report.json").read_text())["config"]["budget_int8"] is True
    s8 = minivit.from_pretrained(out8)
    assert int8_bytes(s8) <= 0.3 * tensor_bytes(t) < tensor_bytes(s8)
    code = None
    with pytest.raises(SystemExit) as exc:
        main(["compress", "--teacher", str(teacher), "--budget", "2", "--data", "digits", "--output",
              str(tmp_path / "x"), *fast])
    code = exc.value.code
    assert code == 2 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("make, share", [(small_vit, 2), (small_vit, 3), (small_vit, "all"), (small_swin, 2)])
def test_recipe_spends_the_bytes_of_the_share_on_relaxed_sharing(make, share):
    from minivit.budget import RECIPE, recipe

    teacher = make()
    plain = tensor_bytes(minivit.multiplex(teacher, share=share))
    picked = recipe(teacher, share)
    student = minivit.multiplex(teacher, picked.spec)
    assert tensor_bytes(student) == picked.bytes <= plain
    assert all(getattr(picked.spec, k) == v for k, v in RECIPE.items())
    assert picked.spec.init in ("first", "mean")
    # the recipe starts at least as close to the teacher as the plain student of the same bytes
    assert start_error(teacher, picked.spec.share, picked.spec.delta_rank, picked.spec.init) <= start_error(
        teacher, minivit.multiplex(teacher, share=share).blocks[0].share if make is small_vit else 2, 0, "first")


def test_recipe_keeps_the_other_fields_and_checks_the_share():
    from minivit.budget import recipe

    teacher = small_vit()
    picked = recipe(teacher, 2, minivit.MultiplexSpec(separate_norms=False))
    assert picked.spec.separate_norms is False
    with pytest.raises(ConfigError, match="share=4 does not divide"):
        recipe(teacher, 4)


def test_without_deltas_a_group_shares_its_first_layer():
    """The mean of unrelated layers starts closer in squared error but is a weak blur of them: without deltas the
    rule shares the group's first layer; with deltas, the init that starts closer (the mean)."""
    from minivit.budget import _init_rule

    assert _init_rule({"first": 1.8, "mean": 0.9}, 12, 0) == "first"
    assert _init_rule({"first": 0.9, "mean": 0.4}, 12, 6) == "mean"
    assert _init_rule({"first": 0.0, "mean": 0.0}, 1, 0) == "first"
    assert _init_rule({"mean": 0.9}, 12, 0) == "mean"  # the one init asked for
    teacher = small_vit(depth=4)
    for budget in (0.3, 0.6, 0.9):
        picked = plan(teacher, budget)
        assert picked.spec.init == ("first" if picked.spec.delta_rank == 0 else "mean"), picked.describe()


@pytest.mark.parametrize("make", [small_vit, small_swin])
def test_an_int8_budget_holds_the_int8_file_and_buys_the_largest_rank(make):
    """``plan(..., int8=True)``: the student's int8 file (what `export --format safetensors --int8` writes) fits
    the budget, one more delta rank would not, and the same budget buys more than counted in fp32."""
    from minivit.budget import RECIPE
    from minivit.export import int8_bytes

    teacher = make()
    spec = minivit.MultiplexSpec(**RECIPE)
    for budget in (0.5, 0.3):
        picked = plan(teacher, budget, spec, int8=True)
        student = minivit.multiplex(teacher, picked.spec)
        assert int8_bytes(student) == picked.bytes <= budget * tensor_bytes(teacher)
        if picked.spec.delta_rank:
            bigger = minivit.multiplex(teacher, picked.spec.replace(delta_rank=picked.spec.delta_rank + 1))
            assert int8_bytes(bigger) > budget * tensor_bytes(teacher)
        assert tensor_bytes(student) > budget * tensor_bytes(teacher)  # more than an fp32 budget would buy
        assert "int8 file" in picked.describe()


def test_the_rank_search_finds_the_largest_rank_that_fits():
    import random

    from minivit.budget import _largest_rank

    rng = random.Random(0)
    for _ in range(500):
        base, jump, slope = rng.randint(0, 100), rng.randint(0, 50), rng.randint(1, 20)
        digits = [rng.randint(0, 2) for _ in range(300)]  # a header's digits: small, growing steps
        sizes = [base] + [base + jump + slope * r + sum(digits[:r]) // 50 for r in range(1, 300)]
        max_rank, limit = rng.randint(0, 256), rng.randint(base, base + jump + slope * 300)
        want = max(r for r in range(max_rank + 1) if sizes[r] <= limit)
        assert _largest_rank(sizes.__getitem__, limit, max_rank) == want


@pytest.mark.parametrize("make", [small_vit, small_swin])
def test_a_student_built_from_its_config_skips_the_delta_svd(make, monkeypatch):
    """Loading rebuilds the architecture, then loads its weights: the deltas of that build skip the SVD of
    random weights that the load throws away."""
    from minivit.core.delta import LowRankDelta
    from minivit.io.pretrained import build_from_config, model_config

    student = minivit.multiplex(make(), share=2, delta_rank=3)
    monkeypatch.setattr(LowRankDelta, "init_from", lambda *a, **k: pytest.fail("SVD start on a config build"))
    built = build_from_config(model_config(student))
    assert sum(isinstance(m, LowRankDelta) for m in built.modules()) == 4 * (6 if make is small_vit else 4)  # per layer
    built.load_state_dict(student.state_dict())
    x = torch.randn(2, *student.pretrained_cfg["input_size"]) if hasattr(student, "pretrained_cfg") else None
    student.eval(), built.eval()
    assert torch.equal(built(x), student(x))


def test_compress_refuses_an_int8_budget_without_a_budget(tmp_path, capsys):
    from minivit.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["compress", "--teacher", "vit_tiny_patch16_224", "--budget-int8", "--data", "digits", "--epochs", "1",
              "--output", str(tmp_path / "x")])
    assert exc.value.code == 2 and not (tmp_path / "x").exists()
    assert "--budget-int8" in capsys.readouterr().err


@pytest.mark.parametrize("int8", [False, True])
def test_the_planner_drops_bias_offsets_only_where_that_buys_a_larger_rank(int8):
    """The rule: deltas keep their bias offsets unless dropping them fits a larger rank in the budget; checked
    against every rank of both choices for the share number the plan picked."""
    from minivit.budget import _fp32_size, int8_size

    teacher = small_vit()
    sizer = int8_size if int8 else _fp32_size
    seen = set()
    for budget in ((0.13, 0.16) if int8 else (0.25, 0.33, 0.53)):
        picked = plan(teacher, budget, int8=int8)
        limit = budget * tensor_bytes(teacher)
        largest = {}
        for bias in (True, False):
            size = sizer(teacher, picked.spec.replace(delta_bias=bias))
            largest[bias] = next(r for r in range(64) if size(r + 1) > limit)
        assert picked.spec.delta_rank == max(largest.values())
        assert picked.spec.delta_bias == (largest[True] == largest[False]), (budget, largest)
        assert ("without bias offsets" in picked.describe()) == (not picked.spec.delta_bias)
        seen.add(picked.spec.delta_bias)
    # in fp32 both outcomes occur over these budgets; in int8 a layer's offsets (float32) cost more than a rank
    assert seen == ({False} if int8 else {True, False})
    # asked for one choice only, the planner keeps it
    assert plan(teacher, 0.3, int8=int8, offsets=(True,)).spec.delta_bias is True
