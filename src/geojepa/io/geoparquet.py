"""Streaming GeoParquet (1.1, EPSG:4326) writer.

Embeddings of a country do not fit in memory, so they are written batch by batch with
pyarrow, into a temporary file unique to the run that is renamed into place only when complete
(see `geojepa.io.atomic`; the output is locked while it is written). The result reads back
with ``geopandas.read_parquet`` as a GeoDataFrame indexed by ``region_id`` / ``feature_id``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from geojepa.errors import OutputError
from geojepa.io.atomic import OutputLock, describe_os_error

GEOPARQUET_VERSION = "1.1.0"


def _crs_4326() -> dict:
    from pyproj import CRS

    return CRS.from_epsg(4326).to_json_dict()


class GeoParquetWriter:
    """Append DataFrames (index + columns + shapely geometry array) to one GeoParquet file.

    The GeoParquet metadata goes into the schema before the first row group, so nothing is
    re-read at the end; ``geometry_types=[]`` means "any type" in the GeoParquet spec.
    """

    def __init__(self, path: str | Path, index_name: str, geometry_types: list[str]) -> None:
        self.path = Path(path)
        self.index_name = index_name
        self.geometry_types = list(geometry_types)
        if self.path.is_dir():
            raise OutputError(f"{self.path} is a directory: give a file name ending in .parquet")
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self.rows = 0
        self._lock = OutputLock(self.path).acquire()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
            os.close(fd)
        except OSError as exc:
            self._lock.release()
            raise OutputError(describe_os_error(exc, self.path)) from None
        self._tmp = Path(name)

    def write(self, frame: pd.DataFrame, geometry: np.ndarray) -> None:
        """Append rows; ``frame``'s index is the id column, ``geometry`` is EPSG:4326."""
        if len(frame) == 0:
            return
        frame = frame.copy()
        frame.index.name = self.index_name
        frame["geometry"] = shapely.to_wkb(geometry)
        table = pa.Table.from_pandas(frame, preserve_index=True)
        if self._writer is None:
            geo = {
                "version": GEOPARQUET_VERSION,
                "primary_column": "geometry",
                "columns": {
                    "geometry": {
                        "encoding": "WKB",
                        "geometry_types": self.geometry_types,
                        "crs": _crs_4326(),
                    }
                },
            }
            metadata = {**(table.schema.metadata or {}), b"geo": json.dumps(geo).encode()}
            self._schema = table.schema.with_metadata(metadata)
            self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")
        try:
            self._writer.write_table(table.cast(self._schema))
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.path)) from None
        self.rows += len(frame)

    def close(self) -> None:
        """Finish the file and rename it into place."""
        if self._writer is None:
            self.abort()
            raise OutputError(f"nothing to write to {self.path}")
        try:
            self._writer.close()
            self._writer = None
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise OutputError(describe_os_error(exc, self.path)) from None
        self._lock.release()

    def abort(self) -> None:
        """Drop the partial file: an interrupted run never leaves a file that reads as complete."""
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            self._writer = None
        self._tmp.unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self) -> GeoParquetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
