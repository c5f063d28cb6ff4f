"""`.SUCCESS` markers: which ones are new since the sensor's cursor, and how they are grouped into
runs. Pure, Dagster-free Python; `stock_assets.sensors` turns the groups into run requests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
CURSOR_VERSION = 2
# A marker becomes visible in a listing once its upload is complete, stamped (S3's clock) with
# the time it began: an hour covers that delay many times over.
WATERMARK_MARGIN = timedelta(hours=1)
_EPOCH = datetime.fromtimestamp(0, UTC)
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

    @property
    def modified(self) -> datetime:
        return datetime.fromisoformat(self.last_modified)


def list_markers(client: Any, bucket: str) -> list[Marker]:
    """Every `.SUCCESS` object in the bucket, at any prefix, across all listing pages."""
    return [
        Marker(o.key, o.etag.strip('"'), o.last_modified.astimezone(UTC).isoformat())
        for o in list_objects(client, bucket, prefix="")
        if o.key.endswith(MARKER_SUFFIX) and o.last_modified is not None
    ]


@dataclass(frozen=True)
class Cursor:
    """What the sensor has acted on. `seen`: key → version of the markers acted on whose
    LastModified is within WATERMARK_MARGIN of the `watermark`, the newest LastModified acted
    on; markers older than that are behind the watermark. So the cursor (stored with every tick)
    stays as small as the markers of the last hour, however many the bucket keeps."""

    seen: Mapping[str, str] = field(default_factory=dict)
    watermark: datetime | None = None

    def _recent(self, marker: Marker, watermark: datetime | None) -> bool:
        return watermark is None or marker.modified >= watermark - WATERMARK_MARGIN

    def new(self, markers: Sequence[Marker]) -> list[Marker]:
        """Markers not yet acted on: a key never seen, or a key written again since."""
        fresh = (
            m for m in markers
            if self._recent(m, self.watermark) and self.seen.get(m.key) != m.version
        )  # fmt: skip
        return sorted(fresh, key=lambda m: m.key)

    def after(self, markers: Sequence[Marker]) -> Cursor:
        """Every marker in the bucket acted on. Deleted ones drop out: one uploaded again later
        is a new marker."""
        watermark = max([m.modified for m in markers] + [self.watermark or _EPOCH])
        recent = {m.key: m.version for m in markers if self._recent(m, watermark)}
        return Cursor(recent, None if watermark == _EPOCH else watermark)

    def held(self, markers: Sequence[Marker]) -> Cursor:
        """The new markers left new, for a later tick."""
        present = {m.key for m in markers}
        return Cursor({k: v for k, v in self.seen.items() if k in present}, self.watermark)

    def dump(self) -> str:
        watermark = self.watermark.isoformat() if self.watermark else None
        seen = dict(sorted(self.seen.items()))
        return json.dumps({"version": CURSOR_VERSION, "watermark": watermark, "seen": seen})


def parse_cursor(cursor: str | None) -> Cursor:
    """An unreadable cursor is an error: starting from nothing would replay every marker in the
    bucket. Version 1 (every marker in the bucket, no watermark) is read as it is."""
    if not cursor:
        return Cursor()
    data = json.loads(cursor)
    if data.get("version") not in (1, CURSOR_VERSION):
        raise ValueError(f"unknown cursor version {data.get('version')!r}")
    watermark = data.get("watermark")
    return Cursor(dict(data["seen"]), datetime.fromisoformat(watermark) if watermark else None)


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
