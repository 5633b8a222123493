"""Reading and writing files: the one atomic writer (:mod:`minivit.io.atomic`)."""

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

__all__ = [
    "TEMP_PREFIX",
    "WRITE_HINT",
    "atomic_folder",
    "atomic_write",
    "clean_stale",
    "commit",
    "failure_cause",
    "staging",
    "write_failure",
]
