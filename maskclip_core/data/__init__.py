"""Data sources: the built-in `shapes` dataset, CSV/TSV files and WebDataset shards."""
