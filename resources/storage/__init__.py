"""Where products live and how they are written: the data root (a folder or an object-store prefix),
its partitions, atomic writes, and reading rasters in place."""
