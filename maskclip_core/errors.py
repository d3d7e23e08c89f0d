"""Errors a user can cause. The CLI prints their message as one line and exits non-zero."""


class MaskClipError(Exception):
    """Base class for user-facing errors (bad config, bad data, bad checkpoint)."""


class ConfigError(MaskClipError, ValueError):
    """An invalid configuration value or key."""


class DataError(MaskClipError, ValueError):
    """Missing, unreadable or malformed data."""


class CheckpointError(MaskClipError, ValueError):
    """A checkpoint that cannot be read or does not match the model."""


class BadDataError(DataError):
    """More of the training data was unreadable than `run.max_bad_fraction` allows."""


class NonFiniteLossError(MaskClipError):
    """Too many consecutive non-finite losses or gradients."""
