"""minivit: make vision transformers several times smaller by weight multiplexing (MiniViT)."""

from .core.delta import fold_deltas
from .errors import CheckpointError, ConfigError, DataError, MinivitError
from .families import MultiplexedSwinTransformer, MultiplexedVisionTransformer
from .io import from_pretrained, load_official, save_pretrained
from .multiplex import multiplex
from .spec import MultiplexSpec
from .zoo import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MinivitError",
    "MultiplexSpec",
    "MultiplexedSwinTransformer",
    "MultiplexedVisionTransformer",
    "create_model",
    "list_models",
    "fold_deltas",
    "from_pretrained",
    "load_official",
    "multiplex",
    "save_pretrained",
]
