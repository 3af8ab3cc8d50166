"""`PrepareConfig`: everything that decides what a tile dataset contains.

It is saved as ``config.json`` in the dataset before any shard is written, so a re-run can tell
"resume this build" (same config) from "this directory holds another dataset" (different one).
Fields listed in :data:`RUNTIME_FIELDS` only change *how* the build runs, not its result, and
are ignored by that comparison.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from geojepa.config import Config

#: Fields that do not change the dataset's content (ignored when deciding whether to resume).
RUNTIME_FIELDS = frozenset({"workers", "location_index"})

MAX_ZOOM = 22

#: pyosmium's node-location indexes (`osmium.index.map_types()`); the *_file_array ones take a
#: file path after a comma and keep memory flat for country-sized extracts.
LOCATION_INDEXES = ("flex_mem", "sparse_mem_array", "dense_mem_array", "sparse_mem_map",
                    "sparse_mmap_array", "dense_mmap_array", "sparse_file_array",
                    "dense_file_array")  # fmt: skip


class PrepareConfig(Config):
    """How OSM data (and optional imagery) becomes tiles."""

    zoom: int = Field(16, ge=1, le=MAX_ZOOM, description="XYZ Web-Mercator zoom of the tiles")
    image_size: int = Field(224, ge=8, le=4096, description="side of each tile image, pixels")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="keep only tiles intersecting west,south,east,north (EPSG:4326)"
    )
    polygon_wkt: str | None = Field(
        None, description="keep only tiles intersecting this EPSG:4326 (multi)polygon, as WKT"
    )
    shard_levels: int = Field(
        3,
        ge=0,
        le=8,
        description="shards are made of parent tiles at zoom - shard_levels",
    )
    min_shard_elements: int = Field(
        2000,
        ge=1,
        description="neighbouring parent tiles are packed into one shard until it holds this "
        "many elements (avoids many tiny shards); 1 = one parent tile per shard",
    )
    tag_filter: bool = Field(True, description="apply the documented tag filter")
    drop_keys: tuple[str, ...] = Field(
        (), description="extra keys (glob patterns) to drop entirely, on top of the defaults"
    )
    key_only: tuple[str, ...] = Field(
        (), description="extra keys (glob patterns) whose value is dropped, key kept"
    )
    other_relations: bool = Field(
        False,
        description="also keep tagged relations that are not areas (as the union of their "
        "members' geometry); default: skip them",
    )
    imagery: tuple[str, ...] = Field((), description="imagery sources, as given (for the record)")
    workers: int = Field(
        0, ge=0, description="worker processes; 0 = automatic (in-process if small, else all cores)"
    )
    location_index: str = Field(
        "flex_mem",
        description="pyosmium node-location index; 'sparse_file_array,PATH' bounds memory "
        "for very large extracts",
    )

    @field_validator("location_index")
    @classmethod
    def _check_location_index(cls, v: str) -> str:
        kind, _, path = v.partition(",")
        if kind not in LOCATION_INDEXES:
            raise ValueError(f"unknown index {kind!r}; one of {', '.join(LOCATION_INDEXES)}")
        if kind.endswith("_file_array") and not path:
            raise ValueError(f"{kind} needs a file: '{kind},PATH'")
        return v

    @field_validator("bbox")
    @classmethod
    def _check_bbox(
        cls, v: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if v is None:
            return v
        west, south, east, north = v
        if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
            raise ValueError("bbox must be west,south,east,north with west<east, south<north")
        return v

    @field_validator("polygon_wkt")
    @classmethod
    def _check_polygon(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import shapely

        try:
            geom = shapely.from_wkt(v)
        except shapely.errors.ShapelyError as exc:
            raise ValueError(f"polygon_wkt is not valid WKT ({exc})") from None
        if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty:
            raise ValueError("polygon_wkt must be a non-empty Polygon or MultiPolygon")
        return v

    @model_validator(mode="after")
    def _check_shard(self) -> PrepareConfig:
        if self.shard_levels > self.zoom:
            raise ValueError(f"shard_levels ({self.shard_levels}) exceeds zoom ({self.zoom})")
        return self

    @property
    def shard_zoom(self) -> int:
        """Zoom of the parent tile that defines a shard."""
        return self.zoom - self.shard_levels

    def content_dict(self) -> dict:
        """The fields that decide the dataset's content (used to decide whether to resume)."""
        data = self.model_dump(mode="json")
        for key in RUNTIME_FIELDS:
            data.pop(key, None)
        return data
