"""Partitions: every per-region product is partitioned by year x region.

Multi-partition keys print with dimensions sorted by name, region first: "demo|2022".
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition, StaticPartitionsDefinition

from resources.regions import FIRST_YEAR, last_year, validate_region_name, validate_year

year_partitions = StaticPartitionsDefinition([str(y) for y in range(FIRST_YEAR, last_year() + 1)])
region_partitions = DynamicPartitionsDefinition(name="region")
year_region_partitions = MultiPartitionsDefinition({"year": year_partitions, "region": region_partitions})


def year_region_key(year: int | str, region: str) -> MultiPartitionKey:
    return MultiPartitionKey({"year": str(validate_year(year)), "region": validate_region_name(region)})


def year_and_region(context) -> tuple[int, str]:
    """The validated (year, region) of the partition an asset is materialising."""
    keys = context.partition_key.keys_by_dimension
    return validate_year(keys["year"]), validate_region_name(keys["region"])
