"""Family-independent parts of weight multiplexing: the mechanism, per-layer transforms, merging, the recipe."""

from .delta import DELTA_NAMES, FoldedDelta, LayerDeltas, LowRankDelta, fold_deltas
from .features import take_indices
from .irpe import ContextualRPE, num_product_buckets, piecewise_index, product_bucket_index
from .merge import merge_modules
from .multiplex import (
    LayerParts,
    Multiplexed,
    Tap,
    adopt,
    build_groups,
    check_share,
    iter_layers,
    unique_parameter_count,
)
from .recipe import SOURCE_KEYS, Family, copy_outside_blocks, student_from_teacher
from .transforms import HeadMix
from .windows import MASK_VALUE, per_stage, resolve_window_sizes, shifted_window_mask, stage_geometry

__all__ = [
    "LayerParts",
    "adopt",
    "DELTA_NAMES",
    "MASK_VALUE",
    "SOURCE_KEYS",
    "ContextualRPE",
    "Family",
    "FoldedDelta",
    "HeadMix",
    "LayerDeltas",
    "LowRankDelta",
    "Multiplexed",
    "Tap",
    "build_groups",
    "check_share",
    "copy_outside_blocks",
    "fold_deltas",
    "iter_layers",
    "merge_modules",
    "num_product_buckets",
    "per_stage",
    "piecewise_index",
    "product_bucket_index",
    "resolve_window_sizes",
    "shifted_window_mask",
    "stage_geometry",
    "student_from_teacher",
    "take_indices",
    "unique_parameter_count",
]
