"""The embedding table: its LanceDB layout and rows, the filters over it, and similarity search."""
