"""`geojepa info`: the statistics of a prepared dataset, as text or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geojepa.constants import MAX_ENTITIES
from geojepa.data.bucket import MAX_SHARD_CELLS
from geojepa.data.reader import TileDataset, check_shards, open_dataset


def dataset_info(path: str | Path) -> dict[str, Any]:
    """The manifest plus the build config of a complete dataset (InputError otherwise, also
    when a shard does not hold what the manifest says: info never reports damaged data), and
    what the default entity cap cuts (``entity_cap``)."""
    ds = open_dataset(path)
    check_shards(ds)
    info = dict(ds.manifest)
    info["path"] = str(ds.path)
    info["config"] = ds.config.model_dump(mode="json")
    info["entity_cap"] = entities_over_cap(ds, MAX_ENTITIES)
    return info


def entities_over_cap(ds: TileDataset, max_entities: int) -> dict[str, int]:
    """What ``tokenizer.max_entities`` cuts: ``tiles`` over it, the entities of those tiles
    the model never reads (``entities_dropped``, of ``entities``), and the largest tile."""
    counts = ds.read_tiles(columns=["n_entities"]).column("n_entities").to_numpy()
    over = counts[counts > max_entities]
    return {
        "max_entities": int(max_entities),
        "tiles": len(over),
        "entities_dropped": int((over - max_entities).sum()),
        "entities": int(counts.sum()),
        "largest_tile": int(counts.max()) if len(counts) else 0,
    }


def entity_cap_note(cap: dict[str, int]) -> str | None:
    """One line on what the cap cuts, or None when it cuts nothing."""
    if not cap.get("tiles"):
        return None
    share = cap["entities_dropped"] / max(cap["entities"], 1)
    return (
        f"tokenizer.max_entities {cap['max_entities']:,} cuts {cap['tiles']:,} tile(s) (the "
        f"largest holds {cap['largest_tile']:,} entities): {cap['entities_dropped']:,} of "
        f"{cap['entities']:,} entities ({share:.2%}) are not read, a seeded choice of "
        f"{cap['max_entities']:,} is kept per tile"
    )


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
    cap = info.get("entity_cap") or {}
    if cap:
        note = entity_cap_note(cap)
        lines.append(
            "entity cap   (the default) "
            + (note or f"no tile holds more than tokenizer.max_entities {cap['max_entities']:,}")
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
