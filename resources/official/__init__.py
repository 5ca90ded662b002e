"""Official TESSERA embeddings in and out: geotessera's tile layout, its Zarr store, and the resource
that reads whichever is on disk."""
