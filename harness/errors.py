"""User-facing errors: the CLI prints them as one line and exits non-zero, never a traceback."""

from __future__ import annotations


class AdaptbenchError(Exception):
    """A problem the user can fix (bad config, bad data, missing file). Message is one line."""

    exit_code = 2


class ConfigError(AdaptbenchError):
    pass


class DataError(AdaptbenchError):
    pass


class ModelError(AdaptbenchError):
    pass


class StorageError(AdaptbenchError):
    """A file could not be written (disk full, read-only folder, no permission); names the path."""
