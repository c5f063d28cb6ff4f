"""The processing code's entry: run the whole pipeline once, then exit.

    python -m stock_assets.entry [--no-notify] [--tag KEY=VALUE ...]

Runs `stock_pipeline_job` (S3 `Stocks/` + `CompanyNames/top_companies.txt` →
`Output/historical_stock_data.csv` → PostgreSQL `historical_stocks_data`, loaded by
`Scripts/insert_query.sql`) in this process and exits 0 if the run succeeded, 1 if it failed
(3: it succeeded, but its email could not be sent).
`stock-assets provision` uploads this file to the source bucket's `Scripts/`, beside the SQL, where
the course keeps its processing script.

Configuration is the platform's own, from the environment: STOCK_ASSETS_FIRST_NAME / _SURNAME /
_COHORT (or the bucket and topic overrides), STOCK_ASSETS_DATABASE_URL, and boto3's AWS_* variables.
The run is recorded in the Dagster instance at $DAGSTER_HOME, so the UI lists it with its logs and
asset checks; without DAGSTER_HOME it goes to a throwaway instance (a note says so).

Event-driven runs (a `.SUCCESS` marker) go through the Dagster daemon instead, whose sensors send
the SNS email. A run started here need not have a daemon watching its instance, so this entry
sends the same email itself, as every run must end with one (SPEC §1), and tags the run so that
a daemon's sensors leave it alone; `--no-notify` skips it, e.g. for a trial run. A run Dagster
refuses to create (its configuration does not resolve) still ends with a Failure email.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

ENTRY_TRIGGER = "python -m stock_assets.entry"


def _parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--tag expects KEY=VALUE, not {pair!r}")
        tags[key.strip()] = value
    return tags


def _instance() -> Any:
    from dagster import DagsterInstance

    if os.environ.get("DAGSTER_HOME"):
        return DagsterInstance.get()
    print(
        "note: DAGSTER_HOME is not set, so this run is recorded in a throwaway Dagster instance "
        "(set it to keep the run, its logs and checks for the UI)",
        file=sys.stderr,
    )
    return DagsterInstance.ephemeral()


def _summary(result: Any) -> str:
    """The counts a person checks first, from the assets' materialisation metadata."""
    from stock_assets.metadata import (
        CSV,
        TABLE,
        PipelineCounts,
        TableMetadata,
        asset_materializations,
    )

    lines = []
    for key in (CSV, TABLE):
        for event in asset_materializations(result, key.to_user_string()):
            table = TableMetadata.extract(event.metadata)
            counts = PipelineCounts.extract(event.metadata)
            shown = {
                "row_count": table.row_count,
                "files_read": counts.files_read,
                "files_skipped": counts.files_skipped,
                "rows_read": counts.rows_read,
                "rows_rejected": counts.rows_rejected,
                "location": counts.location,
            }
            lines.append(
                f"  {key.to_user_string()}: "
                + ", ".join(f"{k}={v}" for k, v in shown.items() if v is not None)
            )
    return "\n".join(lines)


def _notify(instance: Any, run_id: str, succeeded: bool) -> bool:
    """Email the run's outcome as the run-status sensors do; False if it could not be sent."""
    from stock_assets.notifications import NotificationError
    from stock_assets.resources import SNSResource
    from stock_assets.run_report import outcome_subject, publish_run_outcome
    from stock_assets.settings import Naming

    naming = Naming.from_env()
    try:
        message_id = publish_run_outcome(
            instance,
            instance.get_run_by_id(run_id),
            SNSResource.from_env(),
            naming,
            succeeded=succeeded,
            launcher=True,
        )
    except NotificationError as err:
        # Already retried, and recorded on the run: say so loudly, and let the exit code tell.
        print(f"the SNS notification was NOT sent: {err}", file=sys.stderr)
        return False
    subject = outcome_subject(naming, succeeded)
    print(f"sent {subject!r} through SNS (message {message_id})")
    return True


def _notify_start_failure(tags: dict[str, str], error: BaseException) -> None:
    from stock_assets.jobs import STOCK_PIPELINE_JOB
    from stock_assets.notifications import NotificationError, describe_trigger
    from stock_assets.resources import SNSResource
    from stock_assets.run_report import publish_start_failure
    from stock_assets.settings import Naming

    try:
        publish_start_failure(
            SNSResource.from_env(), Naming.from_env(), STOCK_PIPELINE_JOB,
            describe_trigger(tags), error,
        )  # fmt: skip
        print("sent the Failure email through SNS")
    except NotificationError as err:
        print(f"the SNS notification was NOT sent: {err}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=ENTRY_TRIGGER,
        description="Run stock_pipeline_job once; exit 0 on success, 1 on failure.",
    )
    parser.add_argument(
        "--notify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="email the outcome through SNS, as every run does (default: yes)",
    )
    parser.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="extra run tag"
    )
    args = parser.parse_args(argv)
    tags = _parse_tags(args.tag)

    from stock_assets.definitions import defs
    from stock_assets.jobs import STOCK_PIPELINE_JOB
    from stock_assets.notifications import EMAILED_BY_LAUNCHER_TAG, TRIGGER_TAG
    from stock_assets.run_report import step_error

    tags.setdefault(TRIGGER_TAG, ENTRY_TRIGGER)  # names the trigger in the UI and the email
    # This process emails the run (or was told not to): a daemon's sensors leave it alone. The
    # tag names the run, so a re-execution from the UI (which copies tags) is theirs to email.
    run_id = str(uuid.uuid4())
    tags[EMAILED_BY_LAUNCHER_TAG] = run_id
    job = defs.resolve_job_def(STOCK_PIPELINE_JOB)
    with _instance() as instance:
        try:
            result = job.execute_in_process(
                instance=instance, raise_on_error=False, tags=tags, run_id=run_id
            )
        except Exception as err:  # Dagster's own failure, not a step's
            if instance.get_run_by_id(run_id) is not None:  # the run existed: report it
                print(f"{STOCK_PIPELINE_JOB} FAILED (run {run_id}): {err}", file=sys.stderr)
                if args.notify:
                    _notify(instance, run_id, False)
                return 1
            # Before the run existed, e.g. its configuration did not resolve.
            print(f"{STOCK_PIPELINE_JOB} could not start: {err}", file=sys.stderr)
            if args.notify:
                _notify_start_failure(tags, err)
            return 1
        if result.success:
            print(f"{STOCK_PIPELINE_JOB} succeeded (run {result.run_id})\n{_summary(result)}")
        else:
            print(f"{STOCK_PIPELINE_JOB} FAILED (run {result.run_id})", file=sys.stderr)
            for event in result.all_events:
                if event.event_type_value == "STEP_FAILURE":
                    error = step_error(event)
                    print(
                        f"  step {error.step_key}: {error.error_type}: {error.message}",
                        file=sys.stderr,
                    )
        notified = _notify(instance, result.run_id, result.success) if args.notify else True
    if not result.success:
        return 1
    return 0 if notified else 3


if __name__ == "__main__":
    sys.exit(main())
