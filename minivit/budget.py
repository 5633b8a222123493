"""The byte budget: from a fraction of the teacher's stored bytes to a :class:`~minivit.MultiplexSpec`.

``plan(teacher, budget)`` answers "what should I build to keep ``budget`` (a fraction) of my teacher's stored
bytes?" with a share number and a delta rank (relaxed sharing), and the bytes that student will take. The
rule comes from the accuracy-per-byte benchmark (``benchmarks/frontier.py``, results in
``benchmarks/results/frontier.md``); :data:`RULE` says which rule is in force.

Sizes are computed without building the candidates: a student's bytes are the teacher's bytes outside the
transformer blocks, plus one block per group, plus each layer's own parts (norms, head mixing) and its
deltas (``r * (in + out) + out`` numbers per corrected map, see :mod:`minivit.core.delta`).

``plan(teacher, budget, int8=True)`` (``compress --budget F --budget-int8``) counts a student by the file it
will be deployed as instead: the ``model.int8.safetensors`` of ``export --format safetensors --int8`` (per-tensor
scales, the export's default), held against the fp32 teacher's bytes. int8 stores each linear map in a quarter
of its bytes and the rest (norms, embeddings, biases, scales) as it was, so an int8 budget F buys a student of
between F and 4F of the teacher's bytes in fp32, depending on how much of it is linear maps (on the frontier
benchmark's small teacher, 0.125 after int8 buys 0.43 in fp32). These sizes are exact, counted on students
built without their teacher's weights (no SVD).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .core.delta import block_linears
from .errors import ConfigError
from .spec import MultiplexSpec

RULE = ("among the share numbers whose student fits, each with the largest delta rank that fits (its deltas without "
        "bias offsets only where that buys a larger rank) and its init (the group's first layer where there are no "
        "deltas, else whichever of first and mean starts closer), the one whose initial weights are closest to the "
        "teacher's (relative squared error of the shared + delta weights)")
"""Why the first layer without deltas: the mean of a group's layers always has the smaller squared error, but on
its own it is nobody's function. A trained ViT's layers are nearly unrelated (the mean of the 12 layers of the
frontier benchmark's teacher keeps 8% of their energy), so a mean block is a weak blur of them. On that
benchmark (one shared block for 12 layers, 4 epochs, 2 seeds each; first vs mean, top-1):

* rank 0: 86.33 vs 85.84, the first layer clearly ahead;
* rank 3: 87.30 vs 87.50; rank 6: 87.86 vs 87.63; rank 17: 87.91 (1 seed) vs 88.08.

With deltas the two are within 0.25 points, either way round, so the rule keeps the closer start (the mean)
there; against the benchmark's converged teacher, rank 6 gives 89.54 (first) vs 89.515 (mean), 2 seeds each
(``benchmarks/results/frontier.md``).

Why the bias offsets go only where that buys a rank: a delta's offsets cost ``out`` numbers per map and layer
(21.5 kB over the 12 layers of that teacher, float32 in the fp32 and in the int8 file: 0.6 of a rank in fp32,
2.3 in int8). Against its converged teacher (one shared block, 4 epochs, 2 seeds each), at equal rank they were
worth 0.3 points at rank 3 (88.785 vs 88.475) and nothing at rank 6 (89.515 vs 89.505); at equal int8 bytes the
rank they cost was worth more (rank 5 without, 0.117 MB: 89.385; rank 3 with, 0.121 MB: 88.745). The students the
rule changed gained 0.12 (``compress --share 2``: rank 18 without, 17 with) and 0.30 points (``--share 4``: 7 vs
6) in fp32."""


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` picked: the spec, the student's estimated bytes and the fraction of the teacher's
    (``int8``: the bytes are those of the student's int8 file)."""

    spec: MultiplexSpec
    bytes: int
    teacher_bytes: int
    int8: bool = False

    @property
    def fraction(self) -> float:
        return self.bytes / self.teacher_bytes

    def describe(self) -> str:
        s = self.spec
        rank = f", delta rank {s.delta_rank}" if s.delta_rank else ""
        rank += " without bias offsets" if s.delta_rank and not s.delta_bias else ""
        stored = "int8 file" if self.int8 else "stored"
        return (f"share {s.share}{rank}, init {s.init}: about {self.bytes / 1e6:.3f} MB {stored}, "
                f"{self.fraction:.3f} of the teacher's {self.teacher_bytes / 1e6:.3f} MB")


def _blocks(teacher: nn.Module) -> list[list[nn.Module]]:
    """The teacher's transformer blocks, one list per stack (one for a ViT, one per stage for a Swin)."""
    if hasattr(teacher, "layers") and all(hasattr(s, "blocks") for s in teacher.layers):
        return [list(s.blocks) for s in teacher.layers]
    if hasattr(teacher, "blocks"):
        return [list(teacher.blocks)]
    raise ConfigError(f"cannot find the transformer blocks of a {type(teacher).__name__}", "pass a timm ViT or Swin")


def _delta_numbers(stacks: list[list[nn.Module]], share: int, rank: int, bias: bool = True) -> int:
    """Numbers the rank-``rank`` deltas add: ``rank * (in + out) + out`` per corrected map, per layer (without
    the ``out`` bias offsets for ``bias=False``)."""
    if not rank:
        return 0
    n = 0
    for blocks in stacks:
        if min(share, len(blocks)) == 1:
            continue
        maps = block_linears(blocks[0]).values()
        per_layer = sum(rank * (m.in_features + m.out_features) + (m.out_features if bias and m.bias is not None
                                                                    else 0) for m in maps)
        n += len(blocks) * per_layer
    return n


def _elem(teacher: nn.Module) -> int:
    return next(teacher.parameters()).element_size()


def _base_bytes(teacher: nn.Module, spec: MultiplexSpec) -> int:
    """Exact bytes of the student without deltas (built: cheap, no SVD)."""
    from .measure import tensor_bytes
    from .multiplex import multiplex

    return tensor_bytes(multiplex(teacher, spec.replace(delta_rank=0)))


def estimate_bytes(teacher: nn.Module, share: int, delta_rank: int = 0, spec: MultiplexSpec | None = None) -> int:
    """Bytes of ``multiplex(teacher, spec with share and delta_rank)``'s weights."""
    return _fp32_size(teacher, (spec or MultiplexSpec()).replace(share=share))(delta_rank)


def start_error(teacher: nn.Module, share: int, rank: int, init: str = "first") -> float:
    """How far the student starts from its teacher: ``sum ||W_l - (W_shared + delta_l)||^2 / sum ||W_l||^2``
    over the corrected maps (qkv, proj, fc1, fc2) of every layer, with the rank-``rank`` SVD deltas."""
    import torch

    err = total = 0.0
    with torch.no_grad():
        for blocks in _blocks(teacher):
            k = min(share, len(blocks))
            for g in range(0, len(blocks), k):
                group = [block_linears(b) for b in blocks[g : g + k]]
                for name in group[0]:
                    weights = torch.stack([lin[name].weight.detach().double() for lin in group])
                    shared = weights.mean(0) if init == "mean" else weights[0]
                    values = torch.linalg.svdvals(weights - shared)  # (k, min(out, in)), descending
                    err += float(values[:, rank:].square().sum()) if k > 1 else 0.0
                    total += float(weights.square().sum())
    return err / total


def plan(teacher: nn.Module, budget: float, spec: MultiplexSpec | None = None, max_rank: int = 256,
         inits: tuple[str, ...] = ("first", "mean"), int8: bool = False,
         offsets: tuple[bool, ...] = (True, False)) -> Plan:
    """The student for ``budget`` (a fraction of the teacher's stored bytes, 0 < budget <= 1) by :data:`RULE`.

    The candidates are the share numbers that divide every stack's depth, each with the largest delta rank
    whose bytes fit the budget (with or without the deltas' bias offsets, from ``offsets``: without them only
    where that buys a larger rank) and the init :data:`RULE` gives it (from ``inits``); the one with the
    smallest :func:`start_error` wins (ties: fewer bytes). The other fields of ``spec`` are kept. ``int8``: a
    student's bytes are those of its int8 file (:func:`int8_size`), still against the fp32 teacher's bytes.
    """
    if not 0 < budget <= 1:
        raise ConfigError(f"budget must be a fraction in (0, 1], got {budget!r}", "e.g. --budget 0.25")
    from .measure import tensor_bytes

    teacher_bytes = tensor_bytes(teacher)
    what = f"{budget:.3f} of the teacher's stored bytes" + (" after int8" if int8 else "")
    return _within(teacher, teacher_bytes, budget * teacher_bytes, spec or MultiplexSpec(), max_rank, inits, what,
                   int8, offsets)


def _fp32_size(teacher: nn.Module, spec: MultiplexSpec):
    """``rank -> bytes`` of ``multiplex(teacher, spec with delta_rank=rank)``'s weights, without building the
    deltas (the student without them is built once)."""
    base, stacks = _base_bytes(teacher, spec), _blocks(teacher)
    return lambda rank: base + _delta_numbers(stacks, spec.share, rank, spec.delta_bias) * _elem(teacher)


def int8_size(teacher: nn.Module, spec: MultiplexSpec):
    """``rank -> bytes`` of the ``model.int8.safetensors`` (``export --format safetensors --int8``) of
    ``multiplex(teacher, spec with delta_rank=rank)``: exact, counted on a student of that architecture built
    without the teacher's weights (no SVD, random numbers: the file's size depends on shapes only)."""
    from .export.int8 import int8_bytes
    from .io.pretrained import build_from_config, model_config
    from .multiplex import multiplex

    cfg = model_config(multiplex(teacher, spec.replace(delta_rank=0)))
    sizes: dict[int, int] = {}

    def size(rank: int) -> int:
        if rank not in sizes:
            ranked = spec.replace(delta_rank=rank).to_dict()
            args = {**cfg["model_args"], "multiplex": ranked}
            sizes[rank] = int8_bytes(build_from_config({**cfg, "multiplex": ranked, "model_args": args}))
        return sizes[rank]

    return size


def _largest_rank(size, limit: float, max_rank: int) -> int:
    """The largest rank in ``[0, max_rank]`` with ``size(rank) <= limit``, given that ``size(0)`` fits and that
    sizes grow with the rank. From rank 1 on they are affine in the rank (up to a few digits of a file header),
    so a guess from the slope between ranks 1 and 2 is checked first, then a bisection settles the rest."""
    if max_rank == 0 or size(1) > limit:
        return 0
    step = size(2) - size(1) if max_rank >= 2 else 0
    guess = max_rank if step <= 0 else min(max_rank, max(1, 1 + int((limit - size(1)) // step)))
    if size(guess) <= limit:
        if guess == max_rank or size(guess + 1) > limit:
            return guess
        lo, hi = guess + 1, max_rank
    else:
        lo, hi = 1, guess - 1
    while lo < hi:  # size(lo) fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= limit else (lo, mid - 1)
    return lo


def _within(teacher: nn.Module, teacher_bytes: int, limit: float, spec: MultiplexSpec, max_rank: int, inits,
            what: str, int8: bool = False, offsets: tuple[bool, ...] = (True, False)) -> Plan:
    """:func:`plan` for a limit in bytes (of the int8 file with ``int8``)."""
    stacks = _blocks(teacher)
    depths = [len(s) for s in stacks]
    sizer = int8_size if int8 else _fp32_size
    candidates = []
    for k in (k for k in range(1, max(depths) + 1) if all(d % min(k, d) == 0 for d in depths)):
        bias, size, rank = _offsets_rule(lambda b, k=k: sizer(teacher, spec.replace(share=k, delta_bias=b)), limit,
                                         max_rank if k > 1 else 0, offsets)
        if rank is None:
            continue
        errors = {init: start_error(teacher, k, rank, init) for init in inits}
        init = _init_rule(errors, k, rank)
        candidates.append((errors[init], size(rank), k, rank, init, bias))
    if not candidates:
        raise ConfigError(f"no student fits {what}",
                          "a single shared block (--share all) is the smallest; raise the budget")
    _, size, k, rank, init, bias = min(candidates)
    return Plan(spec.replace(share=k, delta_rank=rank, init=init, delta_bias=bias), size, teacher_bytes, int8)


def _offsets_rule(sizer, limit: float, max_rank: int, offsets: tuple[bool, ...]):
    """Whether the deltas keep their bias offsets, by :data:`RULE`, the ``rank -> bytes`` function of that choice
    (``sizer(bias)``) and the largest rank that fits (None when not even rank 0 does): with offsets unless
    dropping them buys a larger rank. Offsets only add bytes, so the largest rank without them fits with them
    exactly when the two choices reach the same rank."""
    if not offsets:
        raise ConfigError("offsets must allow at least one of True and False")
    choices = [(bias, sizer(bias)) for bias in (False, True) if bias in offsets]
    bias, size = choices[0]
    if size(0) > limit:
        return bias, size, None
    rank = _largest_rank(size, limit, max_rank)
    if len(choices) == 2 and choices[1][1](rank) <= limit:
        return (*choices[1], rank)
    return bias, size, rank


def _init_rule(errors: dict[str, float], share: int, rank: int) -> str:
    """The init :data:`RULE` picks from each given init's :func:`start_error`."""
    if share > 1 and rank == 0 and "first" in errors:
        return "first"
    return min(errors, key=lambda init: (errors[init], init))


RECIPE = {"transforms": False}
"""The fields the ``compress`` recipe sets beyond the planner's share, rank, init and bias offsets (see
:func:`recipe`)."""


RECIPE_DISTILL = {"alpha": 0.8}
"""The distillation the ``compress`` recipe uses unless told otherwise: 0.8 of the logit loss on the hard labels,
0.2 on the teacher's soft logits (with the attention and hidden-state relations as configured). Against the
frontier benchmark's converged teacher (90.12, which 4 more epochs no longer improve) the labels cost minivit's
students at most 0.07 points, within the seed spread: 89.955 / 89.515 at 1/2 and 1/4 of the bytes with 0.8,
90.025 / 89.51 with 0 (two seeds each). Against a teacher that still had 2 points to gain (88.11) they were
worth 1.5-1.7 points there (89.79 / 89.125 with 0.8, 88.075 / 87.625 with 0), so the recipe keeps them: a
user's teacher on new data may not be converged (``benchmarks/results/frontier.md``)."""


def recipe(teacher: nn.Module, share: int | str | tuple[int, ...] = 2, spec: MultiplexSpec | None = None,
           max_rank: int = 256) -> Plan:
    """What ``minivit compress --share K`` builds (the default recipe): the bytes of the plain share-``K``
    student (``multiplex(teacher, spec with share=K)``), spent the way :func:`plan` spends a budget, with the
    fields of :data:`RECIPE`. The frontier benchmark measures exactly these students
    (``benchmarks/results/frontier.md``); ``compress --recipe exact`` builds ``spec`` as given instead."""
    from .measure import tensor_bytes

    spec = (spec or MultiplexSpec()).replace(share=share)
    limit = _base_bytes(teacher, spec.replace(delta_rank=0))
    return _within(teacher, tensor_bytes(teacher), limit, spec.replace(**RECIPE), max_rank, ("first", "mean"),
                   f"the bytes of share {share}")


__all__ = ["RECIPE", "RECIPE_DISTILL", "RULE", "Plan", "estimate_bytes", "int8_size", "plan", "recipe",
           "start_error"]
