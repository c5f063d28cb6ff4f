"""`.SUCCESS` markers: which ones are new since the sensor's cursor, and how they are grouped into
runs. Pure, Dagster-free Python; `stock_assets.sensors` turns the groups into run requests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from stock_assets.notifications import (
    MARKER_BUCKET_TAG,
    MARKER_COUNT_TAG,
    MARKER_KEYS_TAG,
    MAX_TAG_VALUE_BYTES,
    TRIGGER_MARKER,
    TRIGGER_TAG,
    marker_keys_tag,
)
from stock_assets.pipeline.s3 import list_objects

MARKER_SUFFIX = ".SUCCESS"
# Markers found in one tick share a run, up to this many per run and as many as fit in one tag
# (MAX_TAG_VALUE_BYTES), so the tag listing them stays readable and storable.
MAX_MARKERS_PER_RUN = 100
CURSOR_VERSION = 1
# The tag every marker run carries (see chunk_tags).
MARKER_RUN_TAG = {TRIGGER_TAG: TRIGGER_MARKER}


@dataclass(frozen=True)
class Marker:
    key: str
    etag: str
    last_modified: str

    @property
    def version(self) -> str:
        # An empty marker re-uploaded has the same ETag (the MD5 of nothing), so the write time
        # tells the uploads apart. S3 keeps LastModified to the second: two identical uploads of
        # one key within the same second look like one object to any listing.
        return f"{self.etag}@{self.last_modified}"


def list_markers(client: Any, bucket: str) -> list[Marker]:
    """Every `.SUCCESS` object in the bucket, at any prefix, across all listing pages."""
    return [
        Marker(o.key, o.etag.strip('"'), o.last_modified.astimezone(UTC).isoformat())
        for o in list_objects(client, bucket, prefix="")
        if o.key.endswith(MARKER_SUFFIX) and o.last_modified is not None
    ]


def parse_cursor(cursor: str | None) -> dict[str, str]:
    """key → version of every marker already acted on. An unreadable cursor is an error: starting
    from nothing would replay every marker in the bucket."""
    if not cursor:
        return {}
    data = json.loads(cursor)
    if data.get("version") != CURSOR_VERSION:
        raise ValueError(f"unknown cursor version {data.get('version')!r}")
    return dict(data["seen"])


def dump_cursor(seen: Mapping[str, str]) -> str:
    return json.dumps({"version": CURSOR_VERSION, "seen": dict(sorted(seen.items()))})


def new_markers(markers: Sequence[Marker], seen: Mapping[str, str]) -> list[Marker]:
    """Markers not yet acted on: a key never seen, or a key written again since."""
    return sorted((m for m in markers if seen.get(m.key) != m.version), key=lambda m: m.key)


def next_seen(markers: Sequence[Marker]) -> dict[str, str]:
    # Only keys still in the bucket: the cursor stays as small as the bucket's marker count, and
    # a deleted marker uploaded again later is a new marker.
    return {m.key: m.version for m in markers}


def held_seen(markers: Sequence[Marker], seen: Mapping[str, str]) -> dict[str, str]:
    """The cursor's entries when the new markers wait for a later tick: what was acted on, for
    the keys still in the bucket; the new markers (and new versions) stay new."""
    return {m.key: seen[m.key] for m in markers if m.key in seen}


def marker_chunks(markers: Sequence[Marker]) -> list[list[Marker]]:
    """The markers, in order, cut into runs: each run's keys tag within MAX_TAG_VALUE_BYTES and
    at most MAX_MARKERS_PER_RUN keys. Every marker is in exactly one chunk."""
    chunks: list[list[Marker]] = []
    chunk: list[Marker] = []
    size = 2  # "[]"
    for marker in markers:
        # Each element costs its JSON form, plus ", " after the first.
        cost = len(marker_keys_tag([marker.key]).encode()) - 2 + (2 if chunk else 0)
        if chunk and (len(chunk) == MAX_MARKERS_PER_RUN or size + cost > MAX_TAG_VALUE_BYTES):
            chunks.append(chunk)
            chunk, size = [], 2
            cost -= 2
        chunk.append(marker)
        size += cost
    if chunk:
        chunks.append(chunk)
    return chunks


def chunk_run_key(chunk: Sequence[Marker]) -> str:
    """The same markers (keys and versions) always give the same run key."""
    identity = "\n".join(f"{m.key}\t{m.version}" for m in chunk)
    return "markers-" + hashlib.sha256(identity.encode()).hexdigest()[:24]


def chunk_tags(bucket: str, chunk: Sequence[Marker]) -> dict[str, str]:
    """The run tags naming the trigger and its markers (keys over MAX_KEY_IN_TAG_BYTES appear
    shortened, with their hash)."""
    return {
        **MARKER_RUN_TAG,
        MARKER_BUCKET_TAG: bucket,
        MARKER_KEYS_TAG: marker_keys_tag([m.key for m in chunk]),
        MARKER_COUNT_TAG: str(len(chunk)),
    }
