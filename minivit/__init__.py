"""minivit: make vision transformers several times smaller by weight multiplexing (MiniViT)."""

from .checkpoint import from_pretrained, save_pretrained
from .convert.official import load_official
from .errors import CheckpointError, ConfigError, DataError, MinivitError
from .models import MultiplexedVisionTransformer, create_model, list_models
from .multiplex import multiplex
from .spec import MultiplexSpec

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MinivitError",
    "MultiplexSpec",
    "MultiplexedVisionTransformer",
    "create_model",
    "list_models",
    "from_pretrained",
    "load_official",
    "multiplex",
    "save_pretrained",
]
