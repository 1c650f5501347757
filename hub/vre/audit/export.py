"""SIEM export formats: JSON Lines and CSV.

Both stream (the store hands rows over as it reads them) and write values exactly as stored: the
export is evidence, so nothing is reformatted, truncated or escaped for spreadsheets (a value that
starts with ``=`` stays as it is; open CSV exports in a spreadsheet with formula evaluation off).

``jsonl``: one JSON object per line: the sealed record (event fields, ``v``, ``seq``,
``received_at``; ``source`` from schema v2 on, absent in v1 records) plus ``hash`` and
``prev_hash``. A SIEM can re-check the chain on its own: drop ``hash`` and ``prev_hash``,
serialise the rest as canonical JSON (sorted keys, ``","``/``":"`` separators, UTF-8) and check
``sha256(prev_hash + text) == hash``.

``csv``: a header row, then one row per record with the columns in :data:`CSV_COLUMNS`; ``details``
is a JSON object in one cell; empty cells are nulls (an empty ``source``: a v1 record, sealed
before provenance was recorded).
"""

from __future__ import annotations

import csv
import json
from typing import Iterable, TextIO

from .schema import canonical_json

FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ("seq", "time", "received_at", "id", "actor", "actor_role", "action", "outcome", "target",
               "project", "dataset", "session", "client", "source", "details", "v", "hash")


def write(fmt: str, rows: Iterable[tuple[str, str, str]], out: TextIO) -> int:
    """Write ``(record, hash, prev_hash)`` rows to ``out`` in ``fmt``; returns rows written."""
    n = 0
    if fmt == "jsonl":
        for record, hash_, prev_hash in rows:
            data = json.loads(record)
            data["hash"], data["prev_hash"] = hash_, prev_hash
            out.write(canonical_json(data) + "\n")
            n += 1
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for record, hash_, _prev in rows:
            data = json.loads(record)
            data["details"] = canonical_json(data.get("details") or {})
            data["hash"] = hash_
            writer.writerow(["" if data.get(k) is None else data[k] for k in CSV_COLUMNS])
            n += 1
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return n
