"""Data preparation: OSM extracts (+ imagery) → a sharded tile dataset on disk."""
