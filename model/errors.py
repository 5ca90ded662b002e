"""Errors of the model package (which imports nothing from the platform around it)."""


class ModelError(Exception):
    """Base class of model errors."""


class CheckpointError(ModelError, ValueError):
    """A checkpoint that is missing, unreadable, or does not match the architecture."""


class HeldOutError(ModelError, ValueError):
    """Labels that cannot be split into groups to hold out."""


class CalibrationError(ModelError, ValueError):
    """Too few pixels with data in both years to calibrate a change score on."""


class VectorDimensionError(ModelError, ValueError):
    """An embedding or query vector of the wrong dimension."""
