"""Partitions: every per-region product is partitioned by year x region.

Multi-partition keys print with dimensions sorted by name, region first: "demo|2022".
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition, StaticPartitionsDefinition

from resources.regions import FIRST_YEAR, PartitionId, last_year

year_partitions = StaticPartitionsDefinition([str(y) for y in range(FIRST_YEAR, last_year() + 1)])
region_partitions = DynamicPartitionsDefinition(name="region")
year_region_partitions = MultiPartitionsDefinition({"year": year_partitions, "region": region_partitions})


def year_region_key(year: int | str, region: str) -> MultiPartitionKey:
    partition = PartitionId(year, region)
    return MultiPartitionKey({"year": str(partition.year), "region": partition.region})


def year_and_region(context) -> tuple[int, str]:
    """The validated (year, region) of the partition an asset is materialising."""
    keys = context.partition_key.keys_by_dimension
    partition = PartitionId(keys["year"], keys["region"])
    return partition.year, partition.region


def materialised_partitions(instance, asset: str) -> list[PartitionId]:
    """The partitions of an asset that the Dagster instance has materialised, sorted: what exists is
    what Dagster recorded, not whatever folders a data root holds."""
    from dagster import AssetKey

    return sorted(PartitionId.parse(key) for key in instance.get_materialized_partitions(AssetKey(asset)))
