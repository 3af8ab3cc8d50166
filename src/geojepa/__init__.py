"""geojepa: self-supervised embeddings of places and map entities (GeoJEPA, arXiv 2503.05774)."""

__version__ = "0.1.0"
