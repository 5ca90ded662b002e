"""Keeps the `region` dynamic partitions in step with regions.yaml, so a region added to the file
(or by `tessera regions add`) shows up in the UI for materialisation and backfills."""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SkipReason, sensor

from resources.errors import UnknownRegionError
from resources.regions import RegionCatalog
from tessera_assets.partitions import region_partitions


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def region_partitions_sensor(context: SensorEvaluationContext, regions: RegionCatalog):
    """Adds a partition for every region of the file. A partition without a region in the file
    (added from the UI's "Add a partition" dialog) fails the tick with the fix: every run of it
    would fail with "unknown region" otherwise."""
    known = set(context.instance.get_dynamic_partitions(region_partitions.name))
    in_file = {r.name for r in regions.all()}
    missing = sorted(in_file - known)
    if missing:
        context.instance.add_dynamic_partitions(region_partitions.name, missing)
        context.log.info(f"added region partitions: {', '.join(missing)}")
    orphans = sorted(known - in_file)
    if orphans:
        raise UnknownRegionError(
            f"region partitions {', '.join(orphans)} have no entry in {regions.path}, so every run of them fails: "
            f"add each with `tessera regions add NAME --bbox W S E N`, or delete the partition in the UI")
    return SkipReason(f"added region partitions: {', '.join(missing)}" if missing
                      else "every region in the regions file is already a partition")
