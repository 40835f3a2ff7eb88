"""The two errors of data loading and preparation, here so that datasets, text and prepare all import them
without importing one another."""


class DatasetUnavailableError(RuntimeError):
    """A dataset is not on disk and could not be fetched; the one-line message says how to get it."""


class DatasetCorruptError(ValueError):
    """A data file is unreadable or inconsistent; the one-line message names it and says how to fix it."""
