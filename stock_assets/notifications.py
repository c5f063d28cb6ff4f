"""What a run's success/failure email says: pure, Dagster-free Python.

The Dagster layer (`stock_assets.run_report`) reads a run's tags and events into a `RunReport`;
this module turns it into a subject the graders match exactly and a body a person can act on. The
run tags the project writes and the sensors' settings from the environment are here too, so the
CLI reads them without importing Dagster.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

# Run tags this project writes. The marker sensor sets the trigger and marker tags; anything else
# that launches the job (the Airflow DAG, a script) may set TRIGGER_TAG to say who it is.
TRIGGER_TAG = "stock_assets/trigger"
MARKER_BUCKET_TAG = "stock_assets/marker_bucket"
MARKER_KEYS_TAG = "stock_assets/marker_keys"
MARKER_COUNT_TAG = "stock_assets/marker_count"
# Set on the run once its notification is out ("sent") or has failed ("failed"), with the id of
# the run it was sent for: a re-execution starts with a copy of its parent's tags.
NOTIFICATION_TAG = "stock_assets/notification"
NOTIFICATION_ID_TAG = "stock_assets/notification_message_id"
NOTIFIED_RUN_TAG = "stock_assets/notification_run_id"
# On a run whose launcher sends its email itself (python -m stock_assets.entry), or was told not
# to (--no-notify): the run-status sensors leave it alone.
EMAILED_BY_LAUNCHER_TAG = "stock_assets/emailed_by_launcher"

TRIGGER_MARKER = "s3-marker"
# What a canceled run's email gives as its failure (Dagster records no failure event for it).
CANCELED_REASON = "the run was canceled before it finished"

# PostgreSQL-backed Dagster instances index run tags on (key, value) with a btree, whose entries
# may not exceed 2,704 bytes: a longer (incompressible) tag value makes creating the run fail, and
# the markers it stands for would never run. Every tag value the marker sensor writes stays under
# this budget; runs are split so that it does.
MAX_TAG_VALUE_BYTES = 2_000
# One marker key inside the keys tag. S3 allows 1,024-byte keys; longer than this, the tag keeps
# the key's head and tail around a hash of the whole key (shorten_key).
MAX_KEY_IN_TAG_BYTES = 300
_KEY_TAIL_BYTES = 40
SENSOR_NAME_TAG = "dagster/sensor_name"
SCHEDULE_NAME_TAG = "dagster/schedule_name"
BACKFILL_TAG = "dagster/backfill"
PARENT_RUN_TAG = "dagster/parent_run_id"

# AWS: subjects are printable ASCII, no line breaks, "less than 100 characters".
SUBJECT_MAX_CHARS = 99
# SNS messages may be 256 KB; an email far shorter than that is still readable.
BODY_MAX_CHARS = 60_000
ERROR_MAX_CHARS = 2_000

# Sensor settings live here too (not in sensors.py) so the CLI can read them without Dagster.
INTERVAL_ENV = "STOCK_ASSETS_SENSOR_INTERVAL_SECONDS"
# The daemon evaluates sensors in a loop that starts every 5 s (Dagster 1.13's
# MIN_INTERVAL_LOOP_TIME) and skips a sensor whose last tick is less than its minimum interval
# ago. An interval of exactly 5 s loses to that loop's jitter: a tick a few milliseconds early is
# skipped and the sensor waits 10 s (benchmarks/results/latency.md). Under 5 s, every loop
# evaluates the sensors; a longer interval adds its length to marker → run and run end → email.
DAEMON_SENSOR_LOOP_SECONDS = 5  # MIN_INTERVAL_LOOP_TIME: no tick comes sooner than this
DEFAULT_INTERVAL_SECONDS = 3
UI_URL_ENV = "STOCK_ASSETS_UI_URL"
DEFAULT_UI_URL = "http://127.0.0.1:3000"


def sensor_interval_seconds(environ: Mapping[str, str] | None = None) -> int:
    """The sensors' minimum interval, from STOCK_ASSETS_SENSOR_INTERVAL_SECONDS (default 3)."""
    raw = (os.environ if environ is None else environ).get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_SECONDS
    try:
        seconds = int(raw)
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV} must be a whole number of seconds, not {raw!r}") from None
    if seconds < 1:
        raise ValueError(f"{INTERVAL_ENV} must be at least 1, not {seconds}")
    return seconds


def ui_base_url() -> str:
    return os.environ.get(UI_URL_ENV, "").strip() or DEFAULT_UI_URL


class NotificationError(RuntimeError):
    """The notification could not be published, after retries where retrying made sense."""


@dataclass(frozen=True)
class ReportedCheck:
    """One asset check's result as the email reports it (read back from the run's events)."""

    asset: str
    name: str
    passed: bool
    severity: str = "ERROR"
    description: str | None = None


@dataclass(frozen=True)
class StepError:
    step_key: str
    error_type: str
    message: str
    causes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunNumbers:
    """Counts taken from the assets' materialisation metadata; None where a step never ran."""

    files_selected: int | None = None
    files_read: int | None = None
    files_skipped: int | None = None
    rows_read: int | None = None
    rows_written: int | None = None
    rows_rejected: int | None = None
    rows_loaded: int | None = None
    output_location: str | None = None
    rejects: Mapping[str, str] = field(default_factory=dict)
    table: str | None = None


@dataclass(frozen=True)
class RunReport:
    run_id: str
    job_name: str
    succeeded: bool
    trigger: str
    run_url: str
    started: datetime | None = None
    ended: datetime | None = None
    numbers: RunNumbers = field(default_factory=RunNumbers)
    checks: Sequence[ReportedCheck] = ()
    step_errors: Sequence[StepError] = ()
    # The run-level failure message, used when no step failed (e.g. the run worker died).
    run_failure_message: str | None = None
    canceled: bool = False  # terminated from the UI or the API, or for its max runtime

    @property
    def duration_seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


def sanitise_subject(subject: str) -> str:
    """Printable ASCII, one line, at most 99 characters, no leading blank (AWS's rules)."""
    one_line = re.sub(r"\s+", " ", subject)
    cleaned = re.sub(r"[^\x20-\x7e]+", "_", one_line).strip()
    return cleaned[:SUBJECT_MAX_CHARS] or "Pipeline_notification"


def _utf8_head(raw: bytes, size: int) -> str:
    # A prefix of valid UTF-8 is invalid at most in its last, cut-in-two character: drop that.
    return raw[:size].decode("utf-8", "ignore")


def _utf8_tail(raw: bytes, size: int) -> str:
    tail = raw[-size:]
    # Skip the continuation bytes (10xxxxxx) of a character cut in two at the start.
    start = 0
    while start < len(tail) and tail[start] & 0xC0 == 0x80:
        start += 1
    return tail[start:].decode("utf-8")


def shorten_key(key: str, limit: int = MAX_KEY_IN_TAG_BYTES) -> str:
    """`key` itself if its UTF-8 form fits in `limit` bytes; else its head and tail around its
    length and SHA-256, so a run tag still names the marker unambiguously (and readably) within
    the tag size budget. Cuts fall between characters, never inside one."""
    raw = key.encode()
    if len(raw) <= limit:
        return key
    middle = f"…[{len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:16]}]…"
    tail = _utf8_tail(raw, _KEY_TAIL_BYTES)
    return _utf8_head(raw, limit - len(middle.encode()) - len(tail.encode())) + middle + tail


def marker_keys_tag(keys: Sequence[str]) -> str:
    """The keys tag's value: a JSON list, non-ASCII kept as is (readable in the UI)."""
    return json.dumps([shorten_key(k) for k in keys], ensure_ascii=False)


def marker_keys_from_tags(tags: Mapping[str, str]) -> list[str]:
    raw = tags.get(MARKER_KEYS_TAG)
    if not raw:
        return []
    try:
        keys = json.loads(raw)
    except ValueError:
        return [raw]
    return [str(k) for k in keys] if isinstance(keys, list) else [str(keys)]


def printable(text: str) -> str:
    """`text` on one line: control and format characters (newlines, bidi overrides) escaped,
    so a marker key or a tag cannot write lines of its own into an email or a log."""
    return "".join(
        c if c == " " or unicodedata.category(c)[0] not in "CZ" else ascii(c)[1:-1] for c in text
    )


def describe_trigger(tags: Mapping[str, str]) -> str:
    """Who or what started the run, from its tags, in words a reader understands (one line:
    see `printable`)."""
    return printable(_describe_trigger(tags))


def _describe_trigger(tags: Mapping[str, str]) -> str:
    if PARENT_RUN_TAG in tags:  # a re-execution carries its parent's tags, the trigger's too
        first = _describe_trigger({k: v for k, v in tags.items() if k != PARENT_RUN_TAG})
        return f"re-execution of run {tags[PARENT_RUN_TAG]} (which was started by: {first})"
    trigger = tags.get(TRIGGER_TAG, "").strip()
    keys = marker_keys_from_tags(tags)
    if trigger == TRIGGER_MARKER or keys:
        bucket = tags.get(MARKER_BUCKET_TAG, "")
        uris = [f"s3://{bucket}/{key}" if bucket else key for key in keys]
        listed = ", ".join(uris) if uris else "(marker keys not recorded)"
        noun = "marker" if len(uris) == 1 else f"{len(uris)} markers"
        return f".SUCCESS {noun} {listed} (sensor {tags.get(SENSOR_NAME_TAG, 'unknown')})"
    # The Airflow DAG tags its runs stock_assets/trigger=airflow, stock_assets/airflow_dag_id, …
    airflow = {k: v for k, v in tags.items() if "airflow" in k.lower()}
    if trigger.lower() == "airflow" or airflow:
        details = ", ".join(f"{k}={v}" for k, v in sorted(airflow.items()))
        return f"Airflow ({details})" if details else "Airflow"
    if trigger:
        return trigger
    if SENSOR_NAME_TAG in tags:
        return f"sensor {tags[SENSOR_NAME_TAG]}"
    if SCHEDULE_NAME_TAG in tags:
        return f"schedule {tags[SCHEDULE_NAME_TAG]}"
    if BACKFILL_TAG in tags:
        return f"backfill {tags[BACKFILL_TAG]}"
    return "launched by hand (Dagster UI, GraphQL API or CLI)"


def format_time(moment: datetime | None) -> str:
    if moment is None:
        return "unknown"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {rest} s" if hours else f"{minutes} min {rest} s"


def _count(value: int | None) -> str:
    return "not reached" if value is None else f"{value:,}"


def _clip(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _data_lines(numbers: RunNumbers) -> list[str]:
    table = numbers.table or "the table"
    lines = [
        "Data",
        f"  files in the filter:   {_count(numbers.files_selected)}",
        f"  files read:            {_count(numbers.files_read)}",
        f"  files skipped:         {_count(numbers.files_skipped)}"
        + ("  (empty, unreadable or missing; reasons kept, see below)" if numbers.files_skipped
           else ""),
        f"  rows read:             {_count(numbers.rows_read)}",
        f"  rows written to CSV:   {_count(numbers.rows_written)}",
        f"  rows rejected:         {_count(numbers.rows_rejected)}",
        f"  rows loaded into {table}: {_count(numbers.rows_loaded)}",
    ]  # fmt: skip
    if numbers.output_location:
        lines.append(f"  output CSV:            {numbers.output_location}")
    for label, uri in sorted(numbers.rejects.items()):
        lines.append(f"  {label.replace('_', ' ')}: {uri}")
    return lines


def _check_lines(checks: Sequence[ReportedCheck]) -> list[str]:
    if not checks:
        return ["Asset checks", "  none ran in this run"]
    failed = [c for c in checks if not c.passed]
    lines = [f"Asset checks ({len(checks) - len(failed)} passed, {len(failed)} failed)"]
    # Failures first: they are what the reader has to act on.
    for check in sorted(checks, key=lambda c: (c.passed, c.asset, c.name)):
        verdict = "PASSED" if check.passed else f"FAILED ({check.severity})"
        detail = f": {_clip(check.description, 300)}" if check.description else ""
        lines.append(f"  {verdict:<16} {check.asset} / {check.name}{detail}")
    return lines


def _failure_lines(report: RunReport) -> list[str]:
    lines = ["What failed"]
    for error in report.step_errors:
        lines.append(f"  step {error.step_key}: {error.error_type}: {_clip(error.message)}")
        lines.extend(f"    caused by {_clip(cause, 500)}" for cause in error.causes)
    if not report.step_errors:
        message = report.run_failure_message or "no step failed and no reason was recorded"
        lines.append(f"  the run itself: {_clip(message)}")
    lines += [
        "",
        "What to do: open the run (link above) for the full log and stack trace, fix the cause,",
        "then drop a new .SUCCESS marker (stock-assets trigger) or re-execute the run in the UI.",
        # Only the table's own load commits it; a step after it (the Parquet copy of a
        # "Materialize all") can still fail the run.
        "A failed run leaves the table exactly as it was before the run."
        if report.numbers.rows_loaded is None
        else "The table was loaded by this run before it failed: it holds the rows above.",
    ]
    return lines


def build_body(report: RunReport) -> str:
    outcome = "SUCCEEDED" if report.succeeded else "CANCELED" if report.canceled else "FAILED"
    lines = [
        f"{report.job_name} {outcome}",
        "",
        f"Run id:     {report.run_id}",
        f"Run in UI:  {report.run_url}",
        f"Triggered:  {report.trigger}",
        f"Started:    {format_time(report.started)}",
        f"Ended:      {format_time(report.ended)}",
        f"Duration:   {format_duration(report.duration_seconds)}",
        "",
        *_data_lines(report.numbers),
        "",
        *_check_lines(report.checks),
    ]
    if not report.succeeded:
        lines += ["", *_failure_lines(report)]
    body = "\n".join(lines) + "\n"
    if len(body) > BODY_MAX_CHARS:
        body = body[: BODY_MAX_CHARS - 40] + "\n… (truncated; see the run in the UI)\n"
    return body


def run_url(base_url: str, run_id: str) -> str:
    return f"{base_url.rstrip('/')}/runs/{run_id}"
