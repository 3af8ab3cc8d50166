"""Writers for the files geojepa hands to users (GeoParquet)."""
