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


class ConfigurationError(TesseraError, ValueError):
    """An environment setting that names no known deployment, provider or catalog."""


class SceneReadFailuresError(TesseraError):
    """More scenes of a partition could not be read than the configured share."""


class CatalogError(TesseraError):
    """A STAC catalog that cannot be opened or searched."""


class PartitionNotMaterialisedError(TesseraError, FileNotFoundError):
    """A partition (raw data, embeddings) that has not been materialised yet."""


class EncoderMismatchError(TesseraError, ValueError):
    """Vectors of different encoders (different embedding spaces) that were about to be mixed."""


def single_encoder(ids: set[str] | list[str], requested: str | None, what: str) -> str:
    """The one encoder id that `what` may use: `requested` if given, else the only id present;
    several ids without a request is an error naming two of them."""
    ids = sorted(set(ids))
    if requested:
        if requested not in ids:
            raise EncoderMismatchError(f"{what} holds no vectors of encoder {requested!r} (present: {', '.join(ids)})")
        return requested
    if len(ids) > 1:
        raise EncoderMismatchError(
            f"{what} mixes vectors of several encoders ({ids[0]} and {ids[1]}{' ...' if len(ids) > 2 else ''}), "
            "which are different embedding spaces: name one encoder_id to use")
    return ids[0]


class TileSourceError(TesseraError):
    """Official embedding tiles that cannot be read as they are: a root or store of the wrong layout,
    a tile whose files disagree, a dataset other than the one asked for, no tile over the region."""


class LabelsError(TesseraError, ValueError):
    """A labels file that cannot be used as given; the message names the problem."""


class SearchError(TesseraError, ValueError):
    """A search that cannot be answered as asked; the message says why."""


class TableSchemaError(TesseraError):
    """An embedding table written by an older version of the platform, in a layout this one cannot extend."""


class SceneReadError(Exception):
    """One scene that could not be read. Not a TesseraError: the ingest counts these and decides, by
    max_lost_fraction, whether the partition fails (SceneReadFailuresError)."""

    def __init__(self, scene, reason: str):
        super().__init__(f"{scene.id}: {reason}")
        self.scene = scene
        self.reason = reason
