"""Where embeddings come from in a deployment: computed by our encoder from the raw partitions, or
imported from official TESSERA tiles (TESSERA_EMBEDDINGS_TILES). The definitions pick their assets by
it; assets that also read the raw partitions (valid counts, baseline series) declare them through
`RAW_INPUTS` in both deployments: with imported embeddings the raw assets are not defined, they show
as sources nothing materialises, and those assets do without them."""

from __future__ import annotations

from dagster import AssetKey

from tessera_assets.resources_by_deployment import official_tiles

RAW_INPUTS: list[AssetKey] = [AssetKey("s2_raw"), AssetKey("s1_raw")]


def embeddings_imported() -> bool:
    return official_tiles() is not None
