"""Building blocks: the multiplexing mechanism, head-mixing transforms, iRPE."""

from .irpe import ContextualRPE
from .multiplex import Multiplexed, Tap, iter_layers, unique_parameter_count
from .transforms import HeadMix

__all__ = ["ContextualRPE", "HeadMix", "Multiplexed", "Tap", "iter_layers", "unique_parameter_count"]
