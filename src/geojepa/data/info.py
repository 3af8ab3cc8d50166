"""`geojepa info`: the statistics of a prepared dataset, as text or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geojepa.data.bucket import MAX_SHARD_CELLS
from geojepa.data.reader import check_shards, open_dataset


def dataset_info(path: str | Path) -> dict[str, Any]:
    """The manifest plus the build config of a complete dataset (InputError otherwise, also
    when a shard does not hold what the manifest says: info never reports damaged data)."""
    ds = open_dataset(path)
    check_shards(ds)
    info = dict(ds.manifest)
    info["path"] = str(ds.path)
    info["config"] = ds.config.model_dump(mode="json")
    return info


def format_info(info: dict[str, Any]) -> str:
    """A short human-readable summary of :func:`dataset_info`."""
    q = info.get("entities_per_tile") or {}
    types = info.get("geometry_types") or {}
    img = info.get("imagery") or {}
    src = info.get("source") or {}
    rep = info.get("geometry_repair") or {}
    inp = info.get("input") or {}
    lines = [
        f"dataset      {info['path']}",
        f"source       {src.get('path', src.get('kind', '?'))}"
        + (f"  (sha256 {src['sha256'][:12]}…)" if src.get("sha256") else ""),
        f"created      {info.get('created')}  (format {info.get('format_version')})",
        f"zoom         {info.get('zoom')}  (shards at zoom {info.get('shard_zoom')}: "
        f"{info.get('n_shards')})",
        f"tiles        {info.get('n_tiles'):,}",
        f"entities     {info.get('n_entities'):,}  (tile clips)",
    ]
    if q:
        lines.append(
            "per tile     "
            + "  ".join(f"{k} {q[k]:g}" for k in ("min", "q25", "median", "q75", "q90", "max"))
            + f"  mean {q['mean']:.1f}"
        )
    lines.append("geometries   " + ", ".join(f"{k} {v:,}" for k, v in types.items()))
    lines.append(f"vocabulary   {info.get('vocab_size'):,} tags over {info.get('n_keys'):,} keys")
    if img.get("tiles_with_image"):
        lines.append(
            f"imagery      {img['tiles_with_image']:,} tiles with an image, "
            f"mean coverage {img['mean_coverage']:.3f}"
        )
    else:
        lines.append("imagery      none")
    lines.append(
        f"repairs      {rep.get('repaired', 0)} repaired, {rep.get('skipped', 0)} skipped, "
        f"{rep.get('clip_repaired', 0)} clips repaired"
    )
    if inp:
        lines.append(
            f"input        {inp.get('elements_read', 0):,} tagged elements read, "
            f"{inp.get('elements_kept', 0):,} kept; skipped: "
            f"{inp.get('empty_after_tag_filter', 0)} only metadata tags, "
            f"{inp.get('skipped_ways', 0)} ways, {inp.get('skipped_relations', 0)} areas "
            f"not assembled, {inp.get('other_relations_skipped', 0)} non-area relations, "
            f"{inp.get('duplicate_ids', 0)} duplicate ids"
        )
        if inp.get("spread_limited"):
            lines[-1] += (
                f"; {inp['spread_limited']} huge (spanning over {MAX_SHARD_CELLS:,} shard cells) "
                "cut only into shards other data fills"
            )
    return "\n".join(lines)
