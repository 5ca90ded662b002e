"""Errors of the orchestration layer (assets, the command line, the explorer); the errors of the
outside world live in `resources.errors`, the model's in `model.errors`."""

from resources.errors import TesseraError


class BadRequest(TesseraError, ValueError):
    """An explorer request the API cannot answer as given; answered with 400 and this message."""
