"""The sharded mode (issue 18): stock_pipeline_sharded_job under the multiprocess executor gives
the single path's bytes and table; a failing shard leaves everything as it was."""

import re
import time
import uuid

import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    execute_job,
    instance_for_test,
    reconstructable,
)
from psycopg2 import sql

from stock_assets.bucket_layout import ARCHIVE_NAME, FILTER_NAME
from stock_assets.local.seed import seed_source_bucket
from stock_assets.metadata import asset_materializations
from stock_assets.pipeline.ledger import LEDGER_TABLE
from stock_assets.pipeline.output import build_output, csv_byte_length
from stock_assets.pipeline.quality import OutputProfile
from stock_assets.pipeline.shards import SCRATCH_PREFIX, shard_of, staging_table
from stock_assets.settings import FILTER_KEY, OUTPUT_KEY, REJECTED_PREFIX, STOCKS_PREFIX
from stock_assets.sharded import SHARDED_JOB
from stock_assets_tests.conftest import SAMPLE_FILTER, SAMPLE_STOCKS, sample_files, table_rows
from stock_assets_tests.faults import HttpFault
from stock_assets_tests.test_full_data import DATA_DIR as FULL_DATA_DIR
from stock_assets_tests.test_pipeline import run_job

HEADER = b"Date,Open,High,Low,Close,Volume,OpenInt\n"


def sharded_job():
    """Module-level, so that each step's process can rebuild the job (with its resources)."""
    from stock_assets.definitions import defs

    return defs.resolve_job_def(SHARDED_JOB)


def run_config(shards: int) -> dict:
    return {"resources": {"settings": {"config": {"shards": shards}}}}


def run_sharded(shards: int, processes: bool = True):
    config = run_config(shards)
    started = time.perf_counter()
    if processes:
        with (
            instance_for_test() as instance,
            execute_job(
                reconstructable(sharded_job),
                instance=instance,
                run_config=config,
                raise_on_error=False,
            ) as result,
        ):
            outcome = (result.success, result.run_id, _failures(result.all_events))
            parts = _shard_steps(result.all_events)
    else:  # execute_in_process: the same steps, one process
        result = sharded_job().execute_in_process(
            instance=DagsterInstance.ephemeral(), run_config=config, raise_on_error=False
        )
        outcome = (result.success, result.run_id, _failures(result.all_events))
        parts = _shard_steps(result.all_events)
    assert parts == shards  # N came from the run's config
    print(f"\nsharded job, {shards} shards: {time.perf_counter() - started:.1f}s")
    return outcome


def _shard_steps(events) -> int:
    started = {e.step_key for e in events if e.event_type_value == "STEP_START"}
    return sum(1 for key in started if key.startswith("sharded_part["))


def _failures(events) -> list[str]:
    def chain(error) -> str:  # the error and its causes: the step's wrapper says little
        cause = error.cause or error.context
        return error.message + "".join(error.stack[-2:]) + (f" <- {chain(cause)}" if cause else "")

    return [
        chain(e.event_specific_data.error) for e in events if e.event_type_value == "STEP_FAILURE"
    ]


@pytest.fixture
def richer_stack(seeded_stack, s3_client, naming):
    """The sample plus what crosses files: a second file of company `two` repeating some of
    its dates (rejected: the first file wins), a bad row, and a name with no file."""
    bucket = naming.source_bucket
    two = (SAMPLE_STOCKS / "two.us.csv").read_bytes().splitlines(keepends=True)
    extra = HEADER + b"".join(two[1:21]) + b"2031-01-02,1.5,2,1,1.75,100,0\n"
    s3_client.put_object(Bucket=bucket, Key=f"{STOCKS_PREFIX}two.uk.csv", Body=extra)
    bad = HEADER + b"2020-01-02,1,2,0.5,1.5,10,0\n2020-01-03,x,2,1,1,10,0\n"
    s3_client.put_object(Bucket=bucket, Key=f"{STOCKS_PREFIX}zz.us.csv", Body=bad)
    names = SAMPLE_FILTER.read_text().strip() + ", 'two.uk.csv', 'zz.us.csv', 'nofile.us.csv'"
    s3_client.put_object(Bucket=bucket, Key=FILTER_KEY, Body=names.encode())
    return seeded_stack


def snapshot(s3_client, naming, db, run_id=None) -> dict:
    bucket = naming.source_bucket
    csv = s3_client.get_object(Bucket=bucket, Key=OUTPUT_KEY)
    found = {
        "csv": csv["Body"].read(),
        "meta": {k: v for k, v in csv["Metadata"].items() if k != "dagster-run-id"},
        "table": sorted(table_rows(db)),
    }
    if run_id:
        for name in ("rejected_rows.csv", "skipped_files.csv"):
            key = f"{REJECTED_PREFIX}{run_id}/{name}"
            try:
                found[name] = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except s3_client.exceptions.NoSuchKey:
                found[name] = None  # nothing of that kind to keep
    with db.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(LEDGER_TABLE)))
        found["loads"] = cur.fetchone()[0]
    return found


def leftovers(s3_client, naming, db) -> list[str]:
    bucket = naming.source_bucket
    objects = s3_client.list_objects_v2(Bucket=bucket, Prefix=SCRATCH_PREFIX).get("Contents", [])
    uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    with db.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE '%\\_\\_staging\\_%'")
        tables = [name for (name,) in cur.fetchall()]
    return [o["Key"] for o in objects] + [u["Key"] for u in uploads] + tables


def test_four_shards_in_processes_give_the_single_paths_csv_and_table(
    richer_stack, s3_client, naming, db
):
    single = run_job()
    assert single.success
    expected = snapshot(s3_client, naming, db, single.run_id)
    names = [n.strip(" '") for n in s3_client.get_object(
        Bucket=naming.source_bucket, Key=FILTER_KEY)["Body"].read().decode().split(",")]  # fmt: skip
    assert len({shard_of(n, 4) for n in names}) >= 3  # the files really are spread out
    assert b"two.uk.csv" in expected["rejected_rows.csv"]  # a cross-file duplicate, rejected

    success, run_id, failures = run_sharded(4)
    assert success, failures
    got = snapshot(s3_client, naming, db, run_id)
    assert got["csv"] == expected["csv"]  # byte-identical, in filter order
    assert got["meta"] == expected["meta"]  # row count, fingerprint, checksum, duplicates
    assert got["table"] == expected["table"]
    assert got["rejected_rows.csv"] == expected["rejected_rows.csv"]
    assert got["skipped_files.csv"] == expected["skipped_files.csv"]
    assert got["loads"] == expected["loads"] + 1
    with db.cursor() as cur:
        cur.execute("SELECT run_id FROM pipeline_loads ORDER BY load_id DESC LIMIT 1")
        assert cur.fetchone()[0] == run_id
    assert leftovers(s3_client, naming, db) == []


def test_a_sharded_run_records_the_single_paths_data_versions_and_durations(richer_stack):
    """Lineage and staleness read each materialisation's data version: the same content gives
    the same versions, whichever job made it."""

    def versions(result) -> dict[str, str | None]:
        return {
            e.asset_key.to_user_string(): (e.event_specific_data.materialization.tags or {}).get(
                "dagster/data_version"
            )
            for e in result.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION"
        }

    single = versions(run_job())
    result = sharded_job().execute_in_process(
        instance=DagsterInstance.ephemeral(), run_config=run_config(2)
    )
    sharded = versions(result)
    # And the run's durations, as the single path reports them (spec §5).
    [csv] = asset_materializations(result, "historical_stock_data_csv")
    durations = ("read_transform_seconds", "write_seconds", "duration_seconds")
    assert all(csv.metadata[name].value > 0 for name in durations)
    shared = {"top_companies", "historical_stock_data_csv", "historical_stocks_data"}
    assert shared <= sharded.keys()
    assert {k: sharded[k] for k in shared} == {k: single[k] for k in shared}
    assert all(single[k] for k in shared)


def test_one_shard_is_the_single_path(richer_stack, s3_client, naming, db):
    single = run_job()
    assert single.success
    expected = snapshot(s3_client, naming, db, single.run_id)
    # What a run whose process died would leave: its plan step's successor removes it.
    s3_client.put_object(
        Bucket=naming.source_bucket, Key=f"{SCRATCH_PREFIX}dead-run/0.csv", Body=b""
    )
    with db.cursor() as cur:
        cur.execute("CREATE UNLOGGED TABLE historical_stocks_data__staging_deadbeef_0 (x int)")
    success, run_id, failures = run_sharded(1, processes=False)
    assert success, failures
    got = snapshot(s3_client, naming, db, run_id)
    assert {k: v for k, v in got.items() if k != "loads"} == {
        k: v for k, v in expected.items() if k != "loads"
    }
    assert leftovers(s3_client, naming, db) == []


def test_a_sharded_run_still_going_keeps_its_scratch(richer_stack, s3_client, naming, db):
    # Two sharded runs at once (`stock-assets dev` does not limit concurrent runs): the second
    # one's plan step removes a crashed run's leftovers, not the first one's parts.
    instance = DagsterInstance.ephemeral()
    going = instance.add_run(
        DagsterRun(job_name=SHARDED_JOB, run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED)
    )
    for run_id in (going.run_id, "dead-run"):
        s3_client.put_object(
            Bucket=naming.source_bucket, Key=f"{SCRATCH_PREFIX}{run_id}/0.csv", Body=b""
        )
    staging = f"historical_stocks_data__staging_{going.run_id.replace('-', '')[:8]}_0"
    with db.cursor() as cur:
        cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} (x int)").format(sql.Identifier(staging)))
    db.commit()
    result = sharded_job().execute_in_process(
        instance=instance, run_config=run_config(1), raise_on_error=False
    )
    assert result.success
    assert leftovers(s3_client, naming, db) == [f"{SCRATCH_PREFIX}{going.run_id}/0.csv", staging]
    # Once that run has ended (here: failed), the next sharded run removes them.
    instance.report_run_failed(going)
    assert (
        sharded_job()
        .execute_in_process(instance=instance, run_config=run_config(1), raise_on_error=False)
        .success
    )
    assert leftovers(s3_client, naming, db) == []


def test_a_clean_up_that_fails_after_the_commit_leaves_the_run_succeeded(
    richer_stack, s3_proxy, s3_client, naming, db
):
    # S3 refuses to delete the run's scratch parts (DeleteObjects) once its table is committed:
    # the run still succeeded with the new CSV and table, and the next sharded run's plan step
    # removes what was left.
    single = run_job()
    assert single.success
    expected = snapshot(s3_client, naming, db, single.run_id)
    fault = HttpFault(method="POST", path_contains="?delete", status=403)
    s3_proxy.faults.append(fault)
    success, run_id, failures = run_sharded(1, processes=False)
    assert success, failures
    assert fault.hits >= 1
    got = snapshot(s3_client, naming, db, run_id)
    assert {k: v for k, v in got.items() if k != "loads"} == {
        k: v for k, v in expected.items() if k != "loads"
    }
    assert any(
        key.startswith(f"{SCRATCH_PREFIX}{run_id}/") for key in leftovers(s3_client, naming, db)
    )
    s3_proxy.faults.clear()
    assert run_sharded(1, processes=False)[0]
    assert leftovers(s3_client, naming, db) == []


def test_a_failing_shard_fails_the_run_and_changes_nothing(
    richer_stack, s3_client, naming, db, s3_proxy
):
    assert run_job().success
    before = snapshot(s3_client, naming, db)
    # Every GET of one file fails (retries included): only its shard cannot make its part.
    s3_proxy.faults.append(
        HttpFault(method="GET", path_contains=f"/{STOCKS_PREFIX}blj.us.csv", status=500)
    )
    success, _, failures = run_sharded(4)
    assert not success
    assert any(f"shard {shard_of('blj.us.csv', 4)}:" in message for message in failures)
    assert snapshot(s3_client, naming, db) == before
    assert leftovers(s3_client, naming, db) == []


def test_a_failed_sharded_run_is_re_executed_whole_not_from_failure(
    richer_stack, s3_client, naming, db, s3_proxy
):
    """Its scratch went with the failure (above), so resuming cannot work: it says so and
    changes nothing; re-executing every step, once the cause is gone, is a complete run."""
    from dagster import ReexecutionOptions

    def run(instance, options=None):
        with execute_job(
            reconstructable(sharded_job), instance=instance, run_config=run_config(4),
            reexecution_options=options, raise_on_error=False,
        ) as result:  # fmt: skip
            return result.success, result.run_id, _failures(result.all_events)

    assert run_job().success
    before = snapshot(s3_client, naming, db)
    s3_proxy.faults.append(
        HttpFault(method="GET", path_contains=f"/{STOCKS_PREFIX}blj.us.csv", status=500)
    )
    with instance_for_test() as instance:
        success, failed, _ = run(instance)
        assert not success
        s3_proxy.faults.clear()  # the cause is gone
        success, _, failures = run(instance, ReexecutionOptions.from_failure(failed, instance))
        assert not success
        assert any(f"cannot resume {failed}: its shards" in f for f in failures)
        assert snapshot(s3_client, naming, db) == before
        success, _, failures = run(instance, ReexecutionOptions(parent_run_id=failed))
        assert success, failures
    assert leftovers(s3_client, naming, db) == []


def test_a_csv_published_by_the_copy_is_recorded_and_loaded_when_s3_will_not_describe_it(
    richer_stack, s3_client, naming, db, s3_proxy
):
    """The copy replaced the CSV; the HEAD that reads its version is refused. The run must go
    on to load the table from it and record it (it rolled the table back, leaving the new CSV
    unrecorded and the table on the old one)."""
    s3_proxy.faults.append(HttpFault(method="HEAD", path_contains=f"/{OUTPUT_KEY}", status=403))
    result = sharded_job().execute_in_process(
        instance=DagsterInstance.ephemeral(), run_config=run_config(2), raise_on_error=False
    )
    s3_proxy.faults.clear()
    assert result.success, _failures(result.all_events)
    head = s3_client.head_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)
    assert head["Metadata"]["dagster-run-id"] == result.run_id
    assert len(table_rows(db)) == int(head["Metadata"]["row-count"])
    recorded = {
        e.asset_key.to_user_string()
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    }
    assert {"historical_stock_data_csv", "historical_stocks_data"} <= recorded


def test_an_over_limit_file_in_one_shard_stops_the_run_before_anything_is_published(
    richer_stack, s3_client, naming, db
):
    assert run_job().success
    before = snapshot(s3_client, naming, db)
    big = HEADER + b"2020-01-01,1,1,1,1,1,0\n" * 50_000
    s3_client.put_object(Bucket=naming.source_bucket, Key=f"{STOCKS_PREFIX}two.us.csv", Body=big)
    success, _, failures = run_sharded(4, processes=False)
    assert not success
    assert any("exceed the 1000000-byte limit: two.us.csv" in m for m in failures)
    assert snapshot(s3_client, naming, db) == before
    assert leftovers(s3_client, naming, db) == []


def test_a_missing_filter_fails_the_plan_with_the_failed_filter_check(
    richer_stack, s3_client, naming, db
):
    assert run_job().success
    before = snapshot(s3_client, naming, db)
    s3_client.delete_object(Bucket=naming.source_bucket, Key=FILTER_KEY)
    result = sharded_job().execute_in_process(
        instance=DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    [failure] = _failures(result.all_events)
    assert "top_companies.txt does not exist" in failure
    # As the single path shows it: the failed check on top_companies, which names the file.
    [check] = result.get_asset_check_evaluations()
    assert (check.asset_key.to_user_string(), check.check_name) == (
        "top_companies",
        "filter_file_valid",
    )
    assert not check.passed
    assert "top_companies.txt does not exist" in check.description
    assert _shard_steps(result.all_events) == 0
    assert snapshot(s3_client, naming, db) == before


@pytest.mark.full
@pytest.mark.skipif(
    not (FULL_DATA_DIR / ARCHIVE_NAME).exists(), reason=f"no {ARCHIVE_NAME} in {FULL_DATA_DIR}"
)
def test_four_shards_on_the_full_real_data_set_equal_the_single_path(
    clean_stack, s3_client, naming, db
):
    filter_bytes = (FULL_DATA_DIR / FILTER_NAME).read_bytes()
    seed_source_bucket(s3_client, naming, data_dir=FULL_DATA_DIR, filter_bytes=filter_bytes)
    started = time.perf_counter()
    single = run_job()
    print(f"\nsingle path, 1,000 real files: {time.perf_counter() - started:.1f}s")
    assert single.success
    expected = snapshot(s3_client, naming, db, single.run_id)
    success, run_id, failures = run_sharded(4)
    assert success, failures
    got = snapshot(s3_client, naming, db, run_id)
    assert len(got["csv"]) == len(expected["csv"]) and got["csv"] == expected["csv"]
    assert got["meta"] == expected["meta"] and got["meta"]["row-count"] == "2054899"
    assert got["table"] == expected["table"]
    assert got["skipped_files.csv"] == expected["skipped_files.csv"]
    assert leftovers(s3_client, naming, db) == []


# --- the pieces, without servers ---------------------------------------------------------------


def test_over_limit_files_are_named_in_filter_order(richer_stack, s3_client, naming):
    """As the single path meets them, not in shard order (flhk's shard, 0, comes first)."""
    big = HEADER + b"2020-01-01,1,1,1,1,1,0\n" * 50_000
    for name in ("hcn_i.us.csv", "flhk.us.csv"):  # filter positions 2 and 7; shards 1 and 0
        s3_client.put_object(Bucket=naming.source_bucket, Key=f"{STOCKS_PREFIX}{name}", Body=big)
    success, _, failures = run_sharded(4, processes=False)
    assert not success
    assert any(
        re.search(r"limit: hcn_i\.us\.csv \(\d+ bytes\), flhk\.us\.csv", f) for f in failures
    )


def test_a_table_name_too_long_for_the_staging_tables_is_refused_not_cut():
    """PostgreSQL cuts names at 63 bytes: every shard's staging table would be one table."""
    run_id = str(uuid.uuid4())
    assert staging_table("t" * 30, run_id, 7).startswith("t" * 30 + "__staging_")
    with pytest.raises(ValueError, match="too long for the sharded job's staging tables"):
        staging_table("t" * 45, run_id, 7)


def test_a_companys_files_share_a_shard_and_the_hash_is_stable():
    assert shard_of("abc.us.csv", 4) == shard_of("abc.uk.csv", 4)
    # CRC-32 of the company name (0x5116f7e for b"tmusp"), not Python's salted hash(): the
    # same shard in every process.
    assert shard_of("tmusp.us.csv", 4) == 2
    assert {shard_of(name, 1) for name in ("a.us.csv", "b.us.csv")} == {0}


def test_part_lengths_are_the_bytes_the_csv_writer_writes():
    files = sample_files()
    names = [name for name, _ in files]
    lengths: dict[str, int] = {}
    _, csv, _ = build_output(
        files, names, on_rows=lambda name, rows: lengths.__setitem__(name, csv_byte_length(rows))
    )
    assert sum(lengths.values()) == csv.size == len(csv.getvalue())


def test_profiles_of_disjoint_companies_merge_to_the_whole_ones_counts():
    files = sample_files()
    names = [name for name, _ in files]
    _, _, whole = build_output(files, names)
    parts = [
        build_output([f for f in files if shard_of(f[0], 3) == i], names)[2].detached()
        for i in range(3)
    ]
    merged = OutputProfile.merged(parts)
    assert merged.rows == whole.rows and merged.rows_per_year == whole.rows_per_year
    assert {k: v.count for k, v in merged.findings.items()} == {
        k: v.count for k, v in whole.findings.items()
    }
    assert merged.duplicates().count == whole.duplicates().count


def test_the_sharded_job_runs_its_steps_in_processes():
    from stock_assets.definitions import defs

    job = defs.resolve_job_def(SHARDED_JOB)
    assert job.executor_def.name == "multiprocess"
    assert defs.resolve_job_def("stock_pipeline_job").executor_def.name == "in_process"
