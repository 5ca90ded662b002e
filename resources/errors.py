"""Errors raised at the edge, each naming the bad value and what would be valid.

They all derive from :class:`TesseraError` so the CLI can print them without a traceback.
"""

from __future__ import annotations


class TesseraError(Exception):
    """Base class of every error the platform raises on purpose."""


class InvalidBBoxError(TesseraError, ValueError):
    """A bounding box that is inverted, degenerate or outside valid coordinates."""


class InvalidRegionNameError(TesseraError, ValueError):
    """A region name that cannot serve as a partition key."""


class UnknownRegionError(TesseraError, KeyError):
    """A region that is not in the region catalog."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class RegionTooLargeError(TesseraError, ValueError):
    """A region larger than the configured limit."""


class YearOutOfRangeError(TesseraError, ValueError):
    """A year outside the supported range."""


class NoScenesFoundError(TesseraError):
    """A catalog search that found nothing usable for a partition."""


class CatalogError(TesseraError):
    """A STAC catalog that cannot be opened or searched."""


class PartitionNotMaterialisedError(TesseraError, FileNotFoundError):
    """A partition (raw data, embeddings) that has not been materialised yet."""
