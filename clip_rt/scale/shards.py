"""The output folder of a batch-embedding run: its plan, its Parquet shards, its failures. No Ray here.

    OUT/plan.json                 the inputs (every file, in order), the shard size and the model; fixed at the start
    OUT/part-00000.parquet        shard 0: (file: string, embedding: fixed_size_list<float32>[D]), one row per image
    OUT/part-00000.errors.json    shard 0's unreadable files: [{"file", "error"}]
    OUT/failed.json               every failure of the run (listing problems + every shard's), written at the end
    OUT/summary.json              counts, written at the end

Shard k holds files[k * shard_size : (k + 1) * shard_size]. A shard is finished when its Parquet file exists and
its rows plus its errors account for every one of its files; both files are written atomically, errors first, so
a run killed at any point leaves whole shards or none, and a rerun computes only the unfinished ones.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ClipRtError, InputError, missing_dependency
from ..fsutil import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from ..search import Index

FORMAT = "clip-rt-embeddings"
FORMAT_VERSION = 1
PLAN, SUMMARY, FAILED = "plan.json", "summary.json", "failed.json"


class ShardError(ClipRtError):
    """An output folder that is not a clip-rt embedding run, or belongs to a different run."""


def _pyarrow() -> Any:
    try:
        import pyarrow  # type: ignore[import-untyped]  # pyarrow ships no type information
        import pyarrow.parquet  # type: ignore[import-untyped]  # noqa: F401 - registers pyarrow.parquet
    except ImportError:
        raise missing_dependency("pyarrow", "scale", "Parquet embedding shards") from None
    return pyarrow


def part_path(out: Path, k: int) -> Path:
    return out / f"part-{k:05d}.parquet"


def errors_path(out: Path, k: int) -> Path:
    return out / f"part-{k:05d}.errors.json"


@dataclass(frozen=True)
class Plan:
    """What a run embeds and with what; written once, then every rerun must match it."""

    files: list[str]  # every input image file, in listing order
    shard_size: int  # files per shard
    package: str  # the package folder (absolute)
    fingerprint: str  # the package's fingerprint: embeddings from another package are not comparable
    backend: str
    precision: str
    embed_dim: int
    listing_errors: list[dict[str, str]] = field(default_factory=list)  # paths that could not be listed

    @property
    def shards(self) -> int:
        return -(-len(self.files) // self.shard_size)

    def shard(self, k: int) -> list[str]:
        return self.files[k * self.shard_size: (k + 1) * self.shard_size]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def read(cls, out: Path) -> "Plan":
        try:
            doc = json.loads((out / PLAN).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ShardError(f"{out} is not a clip-rt embedding run (no {PLAN}); make one with "
                             f"clip-rt embed --ray") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ShardError(f"{out / PLAN} is unreadable ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("format_version", 99) > FORMAT_VERSION:
            raise ShardError(f"{out / PLAN} is not a clip-rt embedding plan this version reads")
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


def open_plan(out: Path, plan: Plan) -> Plan:
    """Write `plan` into a new output folder, or check that the folder's plan is the same run (then resume it)."""
    if (out / PLAN).exists():
        old = Plan.read(out)
        same = ("files", "shard_size", "fingerprint", "backend", "precision")
        diff = [k for k in same if getattr(old, k) != getattr(plan, k)]
        if diff:
            raise ShardError(f"{out} holds a run with other {', '.join(diff)} ({len(old.files)} files, shard size "
                             f"{old.shard_size}); resume it with the same inputs and settings, or write to a new "
                             f"output folder")
        return old
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not an embedding run; choose a new or empty output folder")
    atomic_write_json(out / PLAN, plan.to_json())
    return plan


def finished(out: Path, plan: Plan) -> set[int]:
    """Shards whose Parquet rows and errors account for all of their files (reads only Parquet footers)."""
    pa = _pyarrow()
    done = set()
    for k in range(plan.shards):
        part, errs = part_path(out, k), errors_path(out, k)
        if not (part.is_file() and errs.is_file()):
            continue
        try:
            rows = pa.parquet.read_metadata(part).num_rows
            failures = len(json.loads(errs.read_text(encoding="utf-8")))
        except (OSError, ValueError, pa.ArrowException):
            continue  # a damaged shard is computed again
        if rows + failures == len(plan.shard(k)):
            done.add(k)
    return done


def write_shard(out: Path, k: int, files: list[str], embeddings: np.ndarray, errors: list[dict[str, str]],
                plan: Plan) -> None:
    """Shard k: errors file, then the Parquet file (its appearance marks the shard finished)."""
    pa = _pyarrow()
    atomic_write_json(errors_path(out, k), errors)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(len(files), plan.embed_dim)  # [n, D]
    column = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), type=pa.float32()), plan.embed_dim)
    table = pa.table({"file": pa.array(files, type=pa.string()), "embedding": column})
    table = table.replace_schema_metadata({"clip_rt": json.dumps({"fingerprint": plan.fingerprint, "shard": k})})
    sink = io.BytesIO()
    pa.parquet.write_table(table, sink)
    atomic_write_bytes(part_path(out, k), sink.getvalue())


def read_shard(out: Path, k: int) -> tuple[np.ndarray, list[str]]:
    pa = _pyarrow()
    table = pa.parquet.read_table(part_path(out, k))
    files = table.column("file").to_pylist()
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(len(files), -1), files  # [n, D]


def read_embeddings(output: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """A finished run's embeddings, float32 [N, D] L2-normalized, and their files, in input order."""
    out = Path(output)
    plan = Plan.read(out)
    missing = sorted(set(range(plan.shards)) - finished(out, plan))
    if missing:
        raise ShardError(f"{out}: {len(missing)} of {plan.shards} shards are unfinished (first: {missing[0]}); rerun "
                         f"the same clip-rt embed --ray command to finish them")
    parts = [read_shard(out, k) for k in range(plan.shards)]
    emb = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, plan.embed_dim), np.float32)  # [N, D]
    return emb, [f for p in parts for f in p[1]]


def read_failures(output: str | os.PathLike) -> list[dict[str, str]]:
    """Every file the run could not embed, with the reason: listing problems first, then shard by shard."""
    out = Path(output)
    plan = Plan.read(out)
    found = list(plan.listing_errors)
    for k in sorted(finished(out, plan)):
        found.extend(json.loads(errors_path(out, k).read_text(encoding="utf-8")))
    return found


def is_run(path: str | os.PathLike) -> bool:
    """True for a folder written by clip-rt embed --ray (it holds a plan.json)."""
    return (Path(path) / PLAN).is_file()


def index_from_run(output: str | os.PathLike, package: str | os.PathLike, index: str | os.PathLike) -> "Index":
    """`clip-rt index PKG RUN -o INDEX`: the run's embeddings saved as an index, refused unless made by PKG."""
    from ..package import Package

    plan = Plan.read(Path(output))
    fingerprint = Package.open(Path(package)).fingerprint
    if plan.fingerprint != fingerprint:
        raise ShardError(f"{output} was embedded with package {plan.package} (fingerprint {plan.fingerprint}), not "
                         f"{package} ({fingerprint}); index it with that package")
    return to_index(output, index)


def to_index(output: str | os.PathLike, index: str | os.PathLike) -> "Index":
    """The run's embeddings saved as a clip_rt.search index at `index` (files made absolute), keyed by the package,
    backend and precision that made them, so that the same model can query it (clip-rt search, serve --index)."""
    from ..package import Package
    from ..search import Index, import_vectors

    out = Path(output)
    plan = Plan.read(out)
    emb, files = read_embeddings(out)
    pkg = Package.open(Path(plan.package))
    keys = {e: pkg.embedding_key(e, plan.precision, plan.backend) for e in ("image", "text")}
    header = {"kind": "images", "package": str(Path(plan.package).resolve()), "backend": plan.backend,
              "precision": plan.precision, "keys": keys, "decode": "exact", "imported_from": str(out.resolve())}
    import_vectors(index, [os.path.abspath(f) for f in files], emb, header)
    return Index.open(index)
