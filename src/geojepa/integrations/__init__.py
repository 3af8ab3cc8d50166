"""Adapters that let other geospatial ML libraries use GeoJEPA (optional extras)."""
