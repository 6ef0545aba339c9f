"""A run's files: the work folder of finished chunks, and what a finished run writes.

    <OUTPUT>.parts/               the work folder (work_dir_for), gone once OUTPUT is written
        manifest.json             the input's fingerprint (size, sha256, rows) and the chunk size
        chunk-000007.parquet      a finished chunk's predictions, its model version in metadata
    OUTPUT                        every input row + `predicted_duration`; parquet metadata lists
                                  the model versions that answered
    <OUTPUT stem>.rejected.csv    row, reason, the row's values (rejected_file_for)

Every file is written whole or not at all (core.infra.files.write_atomically), so a run stopped at
any moment leaves parts a rerun can trust.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.infra.files import sha256_file, write_atomically
from core.trip.contract import Floats, Rejections

PREDICTION_COLUMN = "predicted_duration"
MODEL_VERSIONS_KEY = b"tripq.model_versions"  # OUTPUT's parquet schema metadata: a JSON list
MANIFEST = "manifest.json"

_MANIFEST_FORMAT = 1
_PART_VERSION_KEY = b"tripq.model_version"


def work_dir_for(output: Path) -> Path:
    """Name the folder beside `output` that holds the finished chunks of an unfinished run."""
    return output.with_name(f"{output.name}.parts")


def rejected_file_for(output: Path) -> Path:
    """Name the side file beside `output` that lists the rejected rows."""
    return output.with_name(f"{output.stem}.rejected.csv")


def fingerprint(path: Path, rows: int) -> dict[str, Any]:
    """Describe the input, so a rerun knows whether an earlier run's parts still apply."""
    return {
        "format": _MANIFEST_FORMAT,
        "input": str(path),
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
        "rows": rows,
    }


def same_input(earlier: dict[str, Any], stamp: dict[str, Any]) -> bool:
    """Tell whether an earlier run's manifest describes the same input as `stamp`."""
    keys = ("format", "size", "sha256", "rows")
    return all(earlier.get(key) == stamp[key] for key in keys)


def read_manifest(work_dir: Path) -> dict[str, Any] | None:
    """Return the manifest an earlier run left: None if no folder, {} if it is unreadable."""
    try:
        manifest = json.loads((work_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return None if not work_dir.exists() else {}
    except (OSError, ValueError):
        return {}  # unreadable: it matches nothing, so the folder is started afresh
    return manifest if isinstance(manifest, dict) else {}


def part_path(work_dir: Path, index: int) -> Path:
    """Name the part file of chunk `index`."""
    return work_dir / f"chunk-{index:06d}.parquet"


def finished_parts(work_dir: Path, rows: int, chunk_rows: int) -> frozenset[int]:
    """Find the chunks whose part is in `work_dir`, whole: readable and of the right length."""
    done = set()
    chunks = -(-rows // chunk_rows)
    for index in range(chunks):
        path = part_path(work_dir, index)
        try:
            length = pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowException):
            continue  # absent, or damaged: computed again
        if length == min(rows, (index + 1) * chunk_rows) - index * chunk_rows:
            done.add(index)
    return frozenset(done)


def prepare_work_dir(work_dir: Path, *, keep: bool, stamp: dict[str, Any]) -> None:
    """Empty the work folder unless its parts are kept, and record the input's fingerprint."""
    if work_dir.exists() and not keep:
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in work_dir.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)
    write_atomically(work_dir / MANIFEST, json.dumps(stamp, indent=2) + "\n")


def write_part(work_dir: Path, index: int, predicted: Floats, version: str | None) -> None:
    """Write chunk `index`'s predictions, with the version of the model that made them."""
    metadata = {} if version is None else {_PART_VERSION_KEY: version.encode()}
    table = pa.table({PREDICTION_COLUMN: predicted}).replace_schema_metadata(metadata)
    write_atomically(part_path(work_dir, index), lambda tmp: pq.write_table(table, tmp))


def read_part(work_dir: Path, index: int) -> tuple[Floats, str | None]:
    """Read chunk `index`'s predictions and the model version that made them."""
    table = pq.read_table(part_path(work_dir, index))
    predicted = np.asarray(table[PREDICTION_COLUMN].to_numpy(), dtype=np.float64)
    return predicted, _version_of(table.schema)


def part_version(work_dir: Path, index: int) -> str | None:
    """Return the model version of chunk `index`'s part, reading only its schema."""
    return _version_of(pq.read_schema(part_path(work_dir, index)))


def _version_of(schema: pa.Schema) -> str | None:
    version = (schema.metadata or {}).get(_PART_VERSION_KEY)
    return None if version is None else version.decode()


def write_output(table: pa.Table, path: Path, versions: tuple[str, ...]) -> None:
    """Write OUTPUT as parquet (naming the model versions in its metadata) or CSV."""
    if path.suffix.lower() == ".parquet":
        metadata = dict(table.schema.metadata or {})
        metadata[MODEL_VERSIONS_KEY] = json.dumps(list(versions)).encode()
        table = table.replace_schema_metadata(metadata)
        write_atomically(path, lambda tmp: pq.write_table(table, tmp))
    else:
        write_atomically(path, lambda tmp: pacsv.write_csv(table, tmp))


def write_rejections(path: Path, table: pa.Table, rejections: Rejections) -> Path | None:
    """Write the rejected rows to `path`; remove an earlier run's list when there are none."""
    rows = rejections.rows
    if not len(rows):
        path.unlink(missing_ok=True)
        return None
    values = table.take(pa.array(rows))
    listing = pa.Table.from_arrays(
        [pa.array(rows), pa.array(rejections.reasons, type=pa.string()), *values.columns],
        names=["row", "reason", *values.column_names],
    )
    write_atomically(path, lambda tmp: pacsv.write_csv(listing, tmp))
    return path
