"""Keeps the `region` dynamic partitions in step with regions.yaml, so a region added to the file
(or by `tessera regions add`) shows up in the UI for materialisation and backfills."""


from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from resources.regions import RegionCatalog
from tessera_assets.partitions import region_partitions


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def region_partitions_sensor(context: SensorEvaluationContext, regions: RegionCatalog):
    known = set(context.instance.get_dynamic_partitions(region_partitions.name))
    missing = sorted(r.name for r in regions.all() if r.name not in known)
    if not missing:
        return SkipReason("every region in the regions file is already a partition")
    return SensorResult(dynamic_partitions_requests=[region_partitions.build_add_request(missing)])
