"""Arrow arrays built straight from numpy buffers and Python lists, without pandas.

The build path imports pyarrow only: `pa.Table.to_pandas` and friends would pull pandas into
every worker (about 0.3 s of start-up each).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from geojepa.data import schema

# ``pa.array`` and ``to_numpy`` import pandas on first use (pyarrow's pandas shim: ~0.3-0.4 s
# of CPU per process, a fifth of a small build). These build the same arrays from buffers.


_NUMPY_TYPES = {
    pa.int8(): np.int8,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}


def buffer_array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A fixed-width Arrow array (no nulls) viewing a numpy array of the matching dtype."""
    values = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[type_])
    return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(values)])


def _validity(valid: np.ndarray) -> pa.Buffer | None:
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def bytes_array(items: list, type_: pa.DataType = pa.binary()) -> pa.Array:
    """A string (items: str or None) or binary (bytes or None) Arrow array."""
    if None in items:
        valid = np.array([v is not None for v in items], bool)
        chunks = [v for v in items if v is not None]
    else:
        valid, chunks = np.ones(len(items), bool), items
    if type_ == pa.string():
        text = "".join(chunks)
        if text.isascii():  # (almost always) one encode call; characters = bytes
            data = text.encode("ascii")
        else:
            chunks = [v.encode() for v in chunks]
            data = b"".join(chunks)
    else:
        data = b"".join(chunks)
    lengths = np.zeros(len(items), np.int64)
    lengths[valid] = np.fromiter(map(len, chunks), np.int64, len(chunks))
    offsets = np.zeros(len(items) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError("more than 2 GiB of data in one Arrow array")
    buffers = [_validity(valid), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
    return pa.Array.from_buffers(type_, len(items), buffers)


def tags_array(tags: list[list[tuple[str, str | None]]]) -> pa.Array:
    """``schema.TAGS_TYPE`` array of filtered tags (value None = key kept, value dropped)."""
    counts = np.fromiter(map(len, tags), np.int64, len(tags))
    offsets = np.zeros(len(tags) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    pairs = [kv for t in tags for kv in t]
    keys = bytes_array([k for k, _ in pairs], pa.string())
    items = bytes_array([v for _, v in pairs], pa.string())
    return pa.MapArray.from_arrays(
        buffer_array(offsets.astype(np.int32), pa.int32()), keys, items, type=schema.TAGS_TYPE
    )


def to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-width numeric column as numpy (nulls as NaN, floats only), like ``to_numpy``."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dtype = np.dtype(_NUMPY_TYPES[arr.type])
    validity, data = arr.buffers()[:2]
    n, off = len(arr), arr.offset
    if data is None:
        out = np.zeros(n, dtype)
    else:
        out = np.frombuffer(data, dtype, count=n + off)[off:].copy()
    if arr.null_count:
        bits = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little")
        out[~bits[off : off + n].astype(bool)] = np.nan
    return out
