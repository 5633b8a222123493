"""One exception type for every mistake a user can make.

Library code raises :class:`MinivitError` (or a subclass) with a message that says what is
wrong and how to fix it. The CLI prints that message as one line and exits non-zero; Python
callers can catch it like any ``ValueError``.
"""


class MinivitError(ValueError):
    """A problem with the user's input: bad names, shapes, paths, configs or data."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(MinivitError):
    """A model or training configuration that cannot be honoured."""


class CheckpointError(MinivitError):
    """A checkpoint that cannot be read or does not fit the model."""


class DataError(MinivitError):
    """A dataset that is missing, empty or unreadable."""


class WriteError(MinivitError):
    """A file that could not be written: no space left, no permission, a read-only file system."""
