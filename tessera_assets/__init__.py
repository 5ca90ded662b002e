"""Dagster assets, partitions, sensors and the `tessera` command line."""
