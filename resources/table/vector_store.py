"""The embedding table as a Dagster resource: `VectorStore` is `TableStore` (`resources.table.store`,
which documents the table's layout, writes and indexes) made a ConfigurableResource, so its
settings are run config and show in the launchpad. The settings and operations stay in `TableStore`,
which needs no Dagster: a one-off search opens the table without importing it."""

from __future__ import annotations

from dagster import ConfigurableResource

from resources.table.store import TableStore


class VectorStore(TableStore, ConfigurableResource):
    """The embedding table's LanceDB database, as the `vectors` resource of the assets."""
