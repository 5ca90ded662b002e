"""`labels`: the labelled points and polygons few-shot assets learn from, as an asset Dagster observes.

The labels are made outside Dagster (in QGIS, geojson.io, the explorer), so they are an observable
source asset: each observation records the content hash of the labels files as its data version, and
the UI marks `fewshot_samples` stale as soon as a file is edited, added or removed. The automation
sensor `labels_observed` observes them every minute."""

from __future__ import annotations

import warnings

from dagster import (AutomationCondition, AutomationConditionSensorDefinition, BetaWarning, DataVersion, DefaultSensorStatus,
                     ObserveResult, observable_source_asset)

from resources.labels import LabelSource, LabelsError, labels_digest
from resources.storage.data_root import TesseraStorage

# observed every minute (files change outside Dagster), never while an observation is running
EVERY_MINUTE = (AutomationCondition.cron_tick_passed("* * * * *") & ~AutomationCondition.in_progress()).with_label(
    "every minute")


def _labels(label_source: LabelSource, storage: TesseraStorage) -> ObserveResult:
    try:
        files = label_source.files(storage)
    except LabelsError as exc:  # none yet: a version of its own, so adding the first file marks downstream stale
        return ObserveResult(data_version=DataVersion("none"), metadata={"path": label_source.path, "files": 0,
                                                                           "problem": str(exc)})
    return ObserveResult(data_version=DataVersion(labels_digest(files)[:16]), metadata={
        "path": label_source.path, "files": len(files), "names": ", ".join(f.name for f in files[:20]),
        "bytes": sum(f.stat().st_size for f in files)})


with warnings.catch_warnings():  # observable source assets are beta in Dagster 1.13: known, not the user's concern
    warnings.simplefilter("ignore", BetaWarning)
    labels = observable_source_asset(
        name="labels", group_name="fewshot", automation_condition=EVERY_MINUTE, tags={"tessera/needs": "labels"},
        description="Labelled points and polygons (GeoJSON, GeoParquet, CSV) for the few-shot assets")(_labels)


labels_observed = AutomationConditionSensorDefinition(
    "labels_observed", target=[labels], default_status=DefaultSensorStatus.RUNNING,
    description="Observes the labels files every minute, so an edited file marks fewshot_samples stale.")
