"""Where embeddings come from in a deployment: computed by our encoder from the raw partitions, or
imported from official TESSERA tiles (TESSERA_EMBEDDINGS_TILES). The definitions pick their assets by
it. Assets that also read the raw partitions (valid counts, baseline series) declare them through
`RAW_INPUTS`; with imported embeddings there are no raw partitions, and `without_raw_inputs` takes
those deps out, so the lineage shows exactly what each asset reads in either deployment."""

from __future__ import annotations

from dagster import AssetKey, AssetsDefinition

from tessera_assets.resources_by_deployment import official_tiles

RAW_INPUTS: list[AssetKey] = [AssetKey("s2_raw"), AssetKey("s1_raw")]


def embeddings_imported() -> bool:
    return official_tiles() is not None


def without_raw_inputs(assets: list) -> list:
    """The assets with their deps on the raw partitions removed (those assets do without them)."""
    raw = set(RAW_INPUTS)
    return [a.map_asset_specs(lambda spec: spec.replace_attributes(deps=[d for d in spec.deps if d.asset_key not in raw]))
            if isinstance(a, AssetsDefinition) and any(k in raw for k in a.dependency_keys) else a for a in assets]
