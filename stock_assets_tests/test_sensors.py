"""The `.SUCCESS` sensor against a real (moto) bucket: cursor, re-uploads, pagination."""

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)
from dagster_aws.s3 import S3Resource

from stock_assets.jobs import STOCK_PIPELINE_JOB
from stock_assets.markers import (
    MAX_MARKERS_PER_RUN,
    WATERMARK_MARGIN,
    Cursor,
    Marker,
    parse_cursor,
)
from stock_assets.notifications import (
    MARKER_BUCKET_TAG,
    MARKER_KEYS_TAG,
    MAX_KEY_IN_TAG_BYTES,
    MAX_TAG_VALUE_BYTES,
    TRIGGER_TAG,
    sensor_interval_seconds,
    shorten_key,
)
from stock_assets.resources import PipelineSettings
from stock_assets.sensors import marker_run_requests, success_marker_sensor
from stock_assets_tests.faults import ACCESS_DENIED, HttpFault


def tick(
    cursor: str | None = None,
    settings: PipelineSettings | None = None,
    instance: DagsterInstance | None = None,
):
    """One sensor evaluation, as the daemon would run it."""
    context = build_sensor_context(
        cursor=cursor,
        resources={"s3": S3Resource(), "settings": settings or PipelineSettings()},
        instance=instance or DagsterInstance.ephemeral(),
    )
    return success_marker_sensor(context)


def marker_keys(result) -> list[list[str]]:
    return [json.loads(r.tags[MARKER_KEYS_TAG]) for r in result.run_requests or []]


@pytest.fixture
def bucket(seeded_stack, naming) -> str:
    return naming.monitored_bucket


def put(s3_client, bucket: str, key: str, body: bytes = b"") -> None:
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)


def test_markers_at_any_prefix_start_one_run_listing_every_key(bucket, s3_client):
    first = tick()
    assert isinstance(first, SensorResult) and not first.run_requests
    put(s3_client, bucket, ".SUCCESS")
    put(s3_client, bucket, "2026/11/01/.SUCCESS")
    put(s3_client, bucket, "batch.SUCCESS")
    put(s3_client, bucket, "data.csv")  # not a marker
    put(s3_client, bucket, "old.SUCCESS.bak")  # not a marker either

    result = tick(first.cursor)
    [request] = result.run_requests
    assert json.loads(request.tags[MARKER_KEYS_TAG]) == [
        ".SUCCESS", "2026/11/01/.SUCCESS", "batch.SUCCESS"
    ]  # fmt: skip
    assert request.tags[TRIGGER_TAG] == "s3-marker"
    assert request.tags[MARKER_BUCKET_TAG] == bucket
    # Nothing new: nothing requested, whatever the number of ticks.
    again = tick(result.cursor)
    assert not again.run_requests and again.cursor == result.cursor


def test_a_launch_records_what_is_under_stocks(bucket, s3_client, naming):
    first = tick()
    assert not first.asset_events  # nothing launched, nothing observed
    put(s3_client, bucket, ".SUCCESS")
    result = tick(first.cursor)
    assert result.run_requests
    [observation] = result.asset_events
    assert observation.asset_key.to_user_string() == "raw_stock_files"
    listing = s3_client.list_objects_v2(Bucket=naming.source_bucket, Prefix="Stocks/")
    objects = [o for o in listing["Contents"] if not o["Key"].endswith("/")]
    meta = {k: getattr(v, "value", v) for k, v in observation.metadata.items()}
    assert meta["files"] == len(objects)
    assert meta["total_bytes"] == sum(o["Size"] for o in objects)
    assert observation.tags["dagster/data_version"] == meta["listing_fingerprint"]


def test_a_stocks_listing_s3_refuses_still_starts_the_run(bucket, s3_client, s3_proxy):
    # The observation of Stocks/ is informational: an error there (here 403 AccessDenied) is a
    # warning, never a failed tick that would drop the run requests.
    fault = HttpFault(method="GET", path_contains="prefix=Stocks", status=403, body=ACCESS_DENIED)
    s3_proxy.faults.append(fault)
    put(s3_client, bucket, ".SUCCESS")
    result = tick()
    assert marker_keys(result) == [[".SUCCESS"]]
    assert fault.hits and not result.asset_events


def test_each_new_marker_gets_its_own_run(bucket, s3_client):
    put(s3_client, bucket, "a/.SUCCESS")
    one = tick()
    put(s3_client, bucket, "b/.SUCCESS")
    two = tick(one.cursor)
    assert marker_keys(one) == [["a/.SUCCESS"]] and marker_keys(two) == [["b/.SUCCESS"]]
    assert one.run_requests[0].run_key != two.run_requests[0].run_key


def test_rewriting_a_marker_is_a_new_marker(bucket, s3_client):
    put(s3_client, bucket, ".SUCCESS")
    first = tick()
    # New content, same second: a new ETag.
    put(s3_client, bucket, ".SUCCESS", b"again")
    second = tick(first.cursor)
    # Same (empty) content as before, a later second: same ETag, new LastModified.
    time.sleep(1.1)
    put(s3_client, bucket, ".SUCCESS", b"again")
    third = tick(second.cursor)
    assert marker_keys(first) == marker_keys(second) == marker_keys(third) == [[".SUCCESS"]]
    run_keys = {r.run_requests[0].run_key for r in (first, second, third)}
    assert len(run_keys) == 3


def test_new_markers_wait_while_a_marker_run_is_queued(bucket, s3_client):
    """A queued run has read nothing yet and will see what newer markers announce: they wait for
    it to start, so a stream of markers queues one batch at a time instead of a run per tick."""

    # A queued run needs its code location's origin; Dagster has no public constructor for one.
    from dagster._core.remote_origin import (
        InProcessCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    location = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="stock_assets.definitions")
    )
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), STOCK_PIPELINE_JOB)

    def queue(tags: dict[str, str]) -> DagsterRun:
        run = DagsterRun(
            STOCK_PIPELINE_JOB, str(uuid.uuid4()), status=DagsterRunStatus.QUEUED, tags=tags,
            remote_job_origin=origin,
        )  # fmt: skip
        return instance.add_run(run)

    with instance_for_test() as instance:
        put(s3_client, bucket, "a/.SUCCESS")
        first = tick(instance=instance)
        [request] = first.run_requests
        queued = queue(request.tags)
        queue({})  # a queued run the sensor did not launch (the UI, Airflow) holds nothing back
        put(s3_client, bucket, "b/.SUCCESS")
        put(s3_client, bucket, "a/.SUCCESS", b"again")
        held = tick(first.cursor, instance=instance)
        assert not held.run_requests
        assert held.skip_reason and queued.run_id in held.skip_reason.skip_message
        assert "2 new marker(s) wait" in held.skip_reason.skip_message
        held_again = tick(held.cursor, instance=instance)  # still queued: still waiting
        assert not held_again.run_requests

        instance.delete_run(queued.run_id)  # no longer queued (it started, or was removed)
        released = tick(held_again.cursor, instance=instance)
        assert marker_keys(released) == [["a/.SUCCESS", "b/.SUCCESS"]]
        assert not tick(released.cursor, instance=instance).run_requests


def test_cursor_forgets_deleted_markers(bucket, s3_client):
    put(s3_client, bucket, "x/.SUCCESS")
    put(s3_client, bucket, "y/.SUCCESS")
    first = tick()
    s3_client.delete_object(Bucket=bucket, Key="x/.SUCCESS")
    second = tick(first.cursor)
    assert not second.run_requests
    assert list(parse_cursor(second.cursor).seen) == ["y/.SUCCESS"]


def test_markers_past_the_first_listing_page_are_found(bucket, s3_client):
    # 1,050 other objects sort before the markers, so the markers are on the second page.
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: put(s3_client, bucket, f"a-noise/{i:05d}.csv"), range(1050)))
    put(s3_client, bucket, "z/1/.SUCCESS")
    put(s3_client, bucket, "z/2/.SUCCESS")
    assert marker_keys(tick()) == [["z/1/.SUCCESS", "z/2/.SUCCESS"]]


def test_missing_bucket_is_a_skip_with_advice(clean_stack):
    result = tick(settings=PipelineSettings(monitored_bucket="no-such-bucket-here"))
    assert isinstance(result, SkipReason)
    assert "stock-assets provision" in result.skip_message


# --- pure cursor logic ---------------------------------------------------------------------------


T1, T2, T3 = "2026-11-01T10:00:00+00:00", "2026-11-01T10:05:00+00:00", "2026-11-01T10:10:00+00:00"


def test_new_markers_compare_key_and_version():
    seen = Cursor({"a/.SUCCESS": f"e1@{T1}", "b/.SUCCESS": f"e2@{T2}"})
    markers = [
        Marker("a/.SUCCESS", "e1", T1),  # unchanged
        Marker("b/.SUCCESS", "e2", T3),  # rewritten later
        Marker("c/.SUCCESS", "e3", T3),  # new
    ]
    assert [m.key for m in seen.new(markers)] == ["b/.SUCCESS", "c/.SUCCESS"]
    # The version each marker is remembered by: its ETag and its LastModified.
    assert seen.after(markers).seen == {
        "a/.SUCCESS": f"e1@{T1}",
        "b/.SUCCESS": f"e2@{T3}",
        "c/.SUCCESS": f"e3@{T3}",
    }
    assert not seen.after(markers).new(markers)


def test_the_cursor_keeps_only_the_markers_near_the_newest():
    """The cursor is stored with every tick: markers the bucket keeps for months must not make
    it grow. Those older than the newest by more than WATERMARK_MARGIN are behind its
    watermark: not in it, and not new either; writing one again makes it new."""
    newest = datetime.fromisoformat(T3)
    old = (newest - WATERMARK_MARGIN - timedelta(days=30)).isoformat()
    recent = (newest - WATERMARK_MARGIN + timedelta(minutes=1)).isoformat()
    markers = [Marker(f"old/{i}/.SUCCESS", "e", old) for i in range(500)]
    markers += [Marker("recent/.SUCCESS", "e", recent), Marker("newest/.SUCCESS", "e", T3)]
    acted = Cursor().after(markers)
    assert acted.watermark == newest
    assert sorted(acted.seen) == ["newest/.SUCCESS", "recent/.SUCCESS"]
    again = parse_cursor(acted.dump())
    assert again == acted and not again.new(markers)
    assert len(again.dump()) < 300
    rewritten = [*markers[1:], Marker("old/0/.SUCCESS", "e2", T3)]
    assert [m.key for m in again.new(rewritten)] == ["old/0/.SUCCESS"]
    # Held for a later tick: nothing new is recorded, the watermark does not move.
    later = Marker("later/.SUCCESS", "e", (newest + timedelta(hours=5)).isoformat())
    held = again.held([*markers, later])
    assert held.watermark == newest and [m.key for m in held.new([*markers, later])] == [
        "later/.SUCCESS"
    ]


def test_cursor_round_trips_and_refuses_unknown_versions():
    cursor = Cursor({"b": "2", "a": "1"}, datetime.fromisoformat(T2))
    assert parse_cursor(cursor.dump()) == cursor
    assert parse_cursor(None) == Cursor()
    # A cursor of the first version (every marker, no watermark) is read as it is.
    assert parse_cursor(json.dumps({"version": 1, "seen": {"a": "1"}})) == Cursor({"a": "1"})
    with pytest.raises(ValueError, match="cursor version"):
        parse_cursor(json.dumps({"version": 99, "seen": {}}))


def test_many_markers_are_split_into_bounded_runs():
    markers = [Marker(f"{i:04d}/.SUCCESS", "e", "t") for i in range(2 * MAX_MARKERS_PER_RUN + 1)]
    requests = marker_run_requests("bucket", markers)
    sizes = [len(json.loads(r.tags[MARKER_KEYS_TAG])) for r in requests]
    assert sizes == [MAX_MARKERS_PER_RUN, MAX_MARKERS_PER_RUN, 1]
    assert len({r.run_key for r in requests}) == 3
    # Deterministic: the same markers give the same run keys (Dagster launches a key once).
    assert [r.run_key for r in marker_run_requests("bucket", markers)] == [
        r.run_key for r in requests
    ]


HOSTILE_KEYS = [
    "with spaces/and  two  spaces .SUCCESS",
    "ünïcødé/データ/🚀.SUCCESS",
    "a+b&c=d%20e/<x>.SUCCESS",
    "long/" + "x" * (1024 - len("long/.SUCCESS")) + ".SUCCESS",  # S3's longest key
    "long-unicode/" + "データ" * 110 + ".SUCCESS",
    "control\x01chars\t/.SUCCESS",
]


def test_long_keys_are_shortened_with_a_hash_and_short_ones_kept():
    for key in HOSTILE_KEYS:
        short = shorten_key(key)
        assert len(short.encode()) <= MAX_KEY_IN_TAG_BYTES
        if len(key.encode()) <= MAX_KEY_IN_TAG_BYTES:
            assert short == key
        else:
            # Readable head and tail (cut between characters), the length and a hash of it all.
            assert short.endswith(".SUCCESS") and short[:5] == key[:5]
            assert f"[{len(key.encode())} bytes, sha256 " in short
    long_a, long_b = HOSTILE_KEYS[3], HOSTILE_KEYS[3][:-9] + "y.SUCCESS"
    assert shorten_key(long_a) != shorten_key(long_b)  # same head and tail, different hash


def test_every_keys_tag_fits_the_tag_budget_and_lists_each_marker_once():
    # Hundreds of markers, long and unicode keys among them, found in one tick.
    keys = [f"{i:04d}/{k}" for i in range(40) for k in HOSTILE_KEYS] + [
        f"short/{i}.SUCCESS" for i in range(150)
    ]
    markers = [Marker(key, "e", "t") for key in keys]
    requests = marker_run_requests("bucket", markers)
    listed = [k for r in requests for k in json.loads(r.tags[MARKER_KEYS_TAG])]
    assert listed == [shorten_key(k) for k in keys]  # each exactly once, in order
    for request in requests:
        assert len(request.tags[MARKER_KEYS_TAG].encode()) <= MAX_TAG_VALUE_BYTES
        assert len(json.loads(request.tags[MARKER_KEYS_TAG])) <= MAX_MARKERS_PER_RUN
    assert "データ" in requests[0].tags[MARKER_KEYS_TAG]  # stored readable, not \\u-escaped
    # Worst case: a key of control characters, each escaped to six bytes in JSON, still fits.
    [alone] = marker_run_requests("bucket", [Marker("\x01" * 1020 + ".SUCCESS", "e", "t")])
    assert len(alone.tags[MARKER_KEYS_TAG].encode()) <= MAX_TAG_VALUE_BYTES


def test_interval_comes_from_the_environment():
    assert sensor_interval_seconds({}) == 3
    assert sensor_interval_seconds({"STOCK_ASSETS_SENSOR_INTERVAL_SECONDS": "5"}) == 5
    with pytest.raises(ValueError, match="whole number"):
        sensor_interval_seconds({"STOCK_ASSETS_SENSOR_INTERVAL_SECONDS": "soon"})
