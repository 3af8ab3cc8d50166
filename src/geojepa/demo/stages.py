"""The demo's stage runner: what each stage did, reuse of finished ones, the closing summary.

Every stage records the key it was built from in ``demo-state.json``; a re-run reuses a stage
whose key and outputs are still there. While a stage runs, the line an interrupt prints says
which stages finished (their outputs stay) and that the same command goes on from there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from geojepa import interrupt
from geojepa.constants import REGIONS_INDEX
from geojepa.io.atomic import write_json_atomic

if TYPE_CHECKING:
    from rich.console import Console

STATE_FILE = "demo-state.json"


@dataclass
class StageReport:
    """What one stage did: ``ran``, ``reused``, or ``skipped`` (with the reason)."""

    name: str
    status: str
    seconds: float
    outputs: list[Path] = field(default_factory=list)
    note: str = ""


@dataclass
class DemoResult:
    """Where the demo put everything, and how long each stage took."""

    output: Path
    stages: list[StageReport]
    paths: dict[str, Path]
    steps: int
    seconds: float

    def __getitem__(self, key: str) -> Path:
        return self.paths[key]


class _Stages:
    """Runs stages, reusing the ones whose recorded key and outputs are still there."""

    def __init__(self, root: Path, console: Console | None) -> None:
        self.root = root
        self.path = root / STATE_FILE
        self.console = console
        try:
            self.state: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.state = {}
        self.reports: list[StageReport] = []

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)

    def run(
        self,
        name: str,
        key: dict[str, Any],
        outputs: list[Path],
        fn: Callable[[], Any],
        note: str = "",
    ) -> bool:
        """Run ``fn`` unless a previous run with the same ``key`` left all ``outputs``."""
        key = json.loads(json.dumps(key))  # as stored: tuples become lists
        old = self.state.get(name)
        if old is not None and old.get("key") == key and all(p.exists() for p in outputs):
            self.reports.append(StageReport(name, "reused", 0.0, outputs, note))
            where = escape(", ".join(_short(p) for p in outputs))
            self.say(f"[green]✓[/] {name}: reused ({where})")
            return False
        self.say(f"[bold cyan]→[/] {name} {escape(note)}".rstrip())
        start = time.perf_counter()
        interrupt.set_message(self.interrupted_in(name))
        try:
            fn()
        except KeyboardInterrupt:  # also pretrain's Interrupted, which sets its own line
            interrupt.set_message(self.interrupted_in(name))
            raise
        seconds = time.perf_counter() - start
        self.state[name] = {"key": key, "seconds": round(seconds, 1)}
        self.save()
        self.reports.append(StageReport(name, "ran", seconds, outputs, note))
        self.say(f"[green]✓[/] {name}: {seconds:.0f} s")
        return True

    def interrupted_in(self, name: str) -> str:
        """The one line an interrupt of stage ``name`` prints: what was kept, how to go on."""
        done = [r.name for r in self.reports if r.status in ("ran", "reused")]
        kept = f"kept: {', '.join(done)} (in {self.root})" if done else f"{self.root} is kept"
        going_on = "finished stages are reused"
        if name == "pretrain":
            going_on += ", pretraining resumes from its newest checkpoint"
        return (
            f"interrupted during {name}; {kept}; run the same command again to go on ({going_on})"
        )

    def save(self) -> None:
        write_json_atomic(self.path, self.state)

    def skip(self, name: str, reason: str) -> None:
        self.reports.append(StageReport(name, "skipped", 0.0, [], reason))
        self.say(f"[yellow]–[/] {name}: skipped ({escape(reason)})")


def _short(path: Path) -> str:
    return path.name or str(path)


def print_summary(result: DemoResult, console: Console) -> None:
    """A rich table of the stages and a list of where every output is."""
    from rich.table import Table

    table = Table(title="geojepa demo", title_justify="left")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    table.add_column("note")
    colour = {"ran": "green", "reused": "cyan", "skipped": "yellow"}
    for st in result.stages:
        secs = f"{st.seconds:.0f}" if st.status == "ran" else ""
        table.add_row(st.name, f"[{colour[st.status]}]{st.status}[/]", secs, escape(st.note))
    console.print(table)
    where = Table(title="outputs", title_justify="left", show_header=False)
    where.add_column("what")
    where.add_column("where")
    for name, path in result.paths.items():
        where.add_row(name, escape(str(path)))
    console.print(where)
    tiles = next((p for k, p in result.paths.items() if k.startswith("tile embeddings")), None)
    hint = ""
    if tiles is not None and tiles.exists():
        import pyarrow.parquet as pq

        region = pq.read_table(tiles, columns=[REGIONS_INDEX]).column(0)[0].as_py()
        hint = f" or try `geojepa knn {tiles} --region {region}`"
    console.print(
        f"{result.steps} training steps; total {result.seconds / 60:.1f} min. "
        f"Next: open a map-*.html in a browser{hint}.\n"
        "Data © OpenStreetMap contributors (ODbL).",
        highlight=False,
    )
