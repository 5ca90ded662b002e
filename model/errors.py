"""Errors of the model package (which imports nothing from the platform around it)."""


class ModelError(Exception):
    """Base class of model errors."""


class CheckpointError(ModelError, ValueError):
    """A checkpoint that is missing, unreadable, or does not match the architecture."""


class VectorDimensionError(ModelError, ValueError):
    """An embedding or query vector of the wrong dimension."""
