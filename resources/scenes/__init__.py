"""Sentinel scenes: STAC catalogs (and the embedded demo catalog), the physical conventions of each
sensor, and the ingest of scenes onto a region grid."""
