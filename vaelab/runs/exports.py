"""Exports: a run's metrics as CSV, file names for downloads, the runs comparable with one."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence


def metrics_csv(run_id: str, records: Sequence[dict], unit: str) -> str:
    """A run's metrics as CSV: columns ``run, wall_time, step, kind, unit`` and then every
    other key of the records; ``wall_time`` is seconds since the run's first record."""
    fixed = ["run", "wall_time", "step", "kind", "unit"]
    columns = dict.fromkeys(fixed)
    for record in records:
        columns.update(dict.fromkeys(k for k in record if k != "wall"))
    start = next((r["wall"] for r in records if "wall" in r), None)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for record in records:
        wall = record.get("wall")
        writer.writerow(
            {
                **{k: v for k, v in record.items() if k != "wall"},
                "run": run_id,
                "unit": unit,
                "wall_time": None if wall is None or start is None else round(wall - start, 3),
            }
        )
    return out.getvalue()


def export_name(run: dict, what: str = "metrics", ext: str = "csv") -> str:
    """``<run>-metrics.csv``: the file name of an export, from the run's display name."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run["name"])
    return f"{safe}-{what}.{ext}"


def comparable(runs: Sequence[dict], like: dict) -> list[dict]:
    """The runs that can share a chart with ``like``: the same data set and unit."""
    return [r for r in runs if r["data"] == like["data"] and r["unit"] == like["unit"]]
