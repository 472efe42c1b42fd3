"""`data.decode_backend=auto` on a GPU: the backend a measured table says is fastest here.

benchmarks/gpu_decode_check.py measures every decoder side by side on one machine and writes, next
to its markdown report, a table (JSON) of what it measured:

    {"schema": 1, "device": "NVIDIA H200", "date": "2026-12-02", "versions": {...},
     "rows": [{"modality": "video", "codec": "h264", "height": 240, "backend": "nvdec",
               "threads": 7, "pipelines": null, "rate": 812.4, "unit": "clips/s", "items": 512,
               "cpu_cores": 1.9, "engine_util": 84.0}, ...]}

    modality: "video" (codec: FFmpeg's name) or "image" (codec "jpeg"); backend: video "pyav",
    "dali" (mixed), "nvdec"; image "cpu", "nvjpeg" (torchvision), "dali" (mixed);
    rate: items per second; cpu_cores: process CPU time / wall time; engine_util: NVDEC or JPEG
    engine utilisation in % (NVML), null where it was not read.

`best(modality, codec, device_name, available)` picks, among the rows of the tables for this GPU
model and codec, the fastest row of a backend that can run here, at the height closest to the
one asked for (default 240, SSv2-like clips). No row: None, and the caller keeps its own choice
(today's AUTO_REASON), so a machine without a table behaves as before. Tables are found in
$OMNIMAE_DECODE_TABLES (files or folders, separated by os.pathsep), else in the source tree's
benchmarks/results/ (files named *_decode_table.json).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

SCHEMA = 1
TABLE_SUFFIX = "_decode_table.json"
ENV = "OMNIMAE_DECODE_TABLES"
DEFAULT_HEIGHT = 240  # the SSv2-like rows: what training decodes most
_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@dataclass(frozen=True)
class Row:
    """One measured setting of one backend (see the module docstring for the fields)."""

    modality: str
    codec: str
    height: int | None
    backend: str
    rate: float
    unit: str
    items: int
    threads: int | None = None
    pipelines: int | None = None
    cpu_cores: float | None = None
    engine_util: float | None = None
    device: str = ""
    source: str = ""  # the table file it came from

    def setting(self) -> str:
        """'nvdec 7 threads', 'dali 4 pipelines x 2 threads', 'pyav 16 threads'."""
        if self.pipelines:
            return f"{self.backend} {self.pipelines} pipelines x {self.threads} threads"
        return f"{self.backend} {self.threads} threads" if self.threads else self.backend

    def summary(self) -> str:
        cores = f", {self.cpu_cores:.1f} cores" if self.cpu_cores is not None else ""
        return f"{self.setting()} {self.rate:.0f} {self.unit}{cores}"


def table_paths() -> list[Path]:
    """The table files to read: $OMNIMAE_DECODE_TABLES (files / folders), else benchmarks/results/."""
    spec = os.environ.get(ENV)
    roots = [Path(p) for p in spec.split(os.pathsep) if p] if spec is not None else [_RESULTS]
    paths: list[Path] = []
    for root in roots:
        if root.is_dir():
            paths.extend(sorted(root.glob(f"*{TABLE_SUFFIX}")))
        elif root.is_file():
            paths.append(root)
    return paths


@lru_cache(maxsize=8)
def _read(path: str, mtime: float) -> tuple[Row, ...]:
    """The rows of one table file (cached per file version); ValueError for a broken file."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"decode table {path}: {error}") from error
    if not isinstance(table, dict) or table.get("schema") != SCHEMA or not isinstance(table.get("rows"), list):
        raise ValueError(f"decode table {path}: expected schema {SCHEMA} with a list of rows")
    device = str(table.get("device", ""))
    rows = []
    for number, raw in enumerate(table["rows"]):
        try:
            rows.append(Row(modality=str(raw["modality"]), codec=str(raw["codec"]),
                            height=None if raw.get("height") is None else int(raw["height"]),
                            backend=str(raw["backend"]), rate=float(raw["rate"]), unit=str(raw["unit"]),
                            items=int(raw["items"]), threads=raw.get("threads"), pipelines=raw.get("pipelines"),
                            cpu_cores=raw.get("cpu_cores"), engine_util=raw.get("engine_util"),
                            device=device, source=path))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"decode table {path}: row {number}: {type(error).__name__}: {error}") from error
    return tuple(rows)


def load_rows(paths: Iterable[Path] | None = None) -> list[Row]:
    """Every row of the tables at `paths` (default table_paths())."""
    rows: list[Row] = []
    for path in (table_paths() if paths is None else paths):
        rows.extend(_read(str(path), path.stat().st_mtime))
    return rows


@dataclass(frozen=True)
class Choice:
    """What a table says for one modality and codec on one GPU model: the fastest row that can run
    here, and the fastest row of each other backend (for the log line)."""

    best: Row
    others: tuple[Row, ...]

    def reason(self) -> str:
        """One line: the numbers behind the choice and where they come from."""
        where = f"{self.best.modality} {self.best.codec}" + (f" {self.best.height}p" if self.best.height else "")
        versus = "; ".join(row.summary() for row in self.others) or "no other backend measured"
        return (f"fastest measured on {self.best.device} ({where}, {Path(self.best.source).name}): "
                f"{self.best.summary()} vs {versus}")


def best(modality: str, codec: str | None, device_name: str, available: Iterable[str], *,
         height: int | None = None, rows: Iterable[Row] | None = None) -> Choice | None:
    """The fastest measured backend among `available` for `codec` on GPU model `device_name`, or
    None where the tables have no such row (see the module docstring)."""
    if not codec:
        return None
    candidates = [row for row in (load_rows() if rows is None else rows)
                  if row.modality == modality and row.codec == codec and row.device == device_name
                  and row.backend in set(available) and row.rate > 0]
    if not candidates:
        return None
    target = DEFAULT_HEIGHT if height is None else height
    heights = {row.height for row in candidates}
    closest = min(heights, key=lambda h: (abs((h or target) - target), h or 0))
    at_height = [row for row in candidates if row.height == closest]
    fastest: dict[str, Row] = {}
    for row in at_height:
        if row.backend not in fastest or row.rate > fastest[row.backend].rate:
            fastest[row.backend] = row
    ranked = sorted(fastest.values(), key=lambda row: -row.rate)
    return Choice(ranked[0], tuple(ranked[1:]))


def write_table(path: Path, *, device: str, rows: list[dict], versions: dict, date: str) -> Path:
    """Write a table in the format `best` reads (used by benchmarks/gpu_decode_check.py)."""
    for row in rows:  # fail here, not at the next training start
        Row(**{k: v for k, v in row.items() if k in Row.__dataclass_fields__})
    table = {"schema": SCHEMA, "device": device, "date": date, "versions": versions, "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1) + "\n")
    return path


def row_dict(**fields) -> dict:
    """A table row as `write_table` takes it (checked against Row's fields)."""
    return {k: v for k, v in asdict(Row(**fields)).items() if k not in ("device", "source")}
