"""Reading and writing files: the timm-style model folder, checked state-dict loading, the authors'
checkpoints, and the one atomic writer (:mod:`minivit.io.atomic`)."""

from .atomic import (
    TEMP_PREFIX,
    WRITE_HINT,
    atomic_folder,
    atomic_write,
    clean_stale,
    commit,
    failure_cause,
    staging,
    write_failure,
)
from .hub import model_card, push_to_hub
from .lock import LOCK_NAME, OutputInUse, lock_output, locks_output
from .official import load_official
from .pretrained import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    build_from_config,
    check_float_model,
    from_pretrained,
    hub_pretrained_cfg,
    load_weights,
    model_config,
    read_config,
    restore_data_config,
    save_pretrained,
)
from .state_dict import load_state_dict_checked, read_weights

__all__ = [
    "CONFIG_NAME",
    "LOCK_NAME",
    "OutputInUse",
    "TEMP_PREFIX",
    "WEIGHTS_NAME",
    "WRITE_HINT",
    "atomic_folder",
    "atomic_write",
    "build_from_config",
    "check_float_model",
    "clean_stale",
    "commit",
    "failure_cause",
    "from_pretrained",
    "hub_pretrained_cfg",
    "load_official",
    "load_state_dict_checked",
    "load_weights",
    "lock_output",
    "locks_output",
    "model_card",
    "model_config",
    "push_to_hub",
    "read_config",
    "read_weights",
    "restore_data_config",
    "save_pretrained",
    "staging",
    "write_failure",
]
