"""Airflow shim: run Dagster's `stock_pipeline_job` and wait for it.

The pipeline itself lives in Dagster (S3 → filter → CSV → PostgreSQL, with SNS notifications).
This DAG is for places that require an Airflow run: one task launches the job on the Dagster
webserver through its GraphQL API (`launchRun`), logs the run's URL, polls until the run ends, and
fails if the Dagster run did not succeed, quoting the failing step's error.

Self-contained on purpose: it needs only Airflow 3.x and `requests` (airflow/requirements.txt), so
the folder holding it can be synced on its own (Helm chart `dags.gitSync.subPath`).

Configuration, read when the task runs (never at parse time):
- Airflow connection `dagster_default` (another id: env STOCK_ASSETS_DAGSTER_CONN_ID), type HTTP:
  host = the webserver, e.g. `dagster-webserver` with port 3000, or a full URL
  `https://ops.example.com/dagster`; login/password → HTTP basic auth (a proxy in front of the
  webserver); extra JSON: {"headers": {...}, "verify": true | "/path/ca.pem", "ui_url": "..."}.
- Without that connection: env STOCK_ASSETS_DAGSTER_URL (default http://localhost:3000).
- Airflow Variable `stock_assets_dagster` (JSON) with any of the keys in DEFAULTS below; each key
  falls back to env STOCK_ASSETS_DAGSTER_<KEY> and then to the default.

The Dagster run carries tags saying it came from Airflow: `stock_assets/trigger=airflow`, plus
`airflow/dag_id`, `airflow/run_id` and `airflow/try_number`, so the SNS email and the Dagster UI
say which Airflow run started it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import requests
from airflow.sdk import Connection, Variable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

log = logging.getLogger(__name__)

DAG_ID = "stock_pipeline"
DEFAULT_CONN_ID = "dagster_default"
VARIABLE_KEY = "stock_assets_dagster"
ENV_PREFIX = "STOCK_ASSETS_DAGSTER_"

# Every setting the Variable (or env) may change. `url` only applies without a connection.
DEFAULTS: dict[str, Any] = {
    "url": "http://localhost:3000",
    "ui_url": "",  # the URL people open, if it differs from `url`; defaults to `url`
    "job": "stock_pipeline_job",
    "location": "stock_assets",
    "repository": "__repository__",
    "poll_seconds": 10,
    "timeout_seconds": 2 * 60 * 60,
    "request_timeout_seconds": 30,
    # How long the webserver may be unreachable while we wait (restarts, deploys).
    "unreachable_grace_seconds": 300,
}

TRIGGER_TAG = "stock_assets/trigger"
TERMINAL_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}

LAUNCH_RUN = """
mutation LaunchStockPipeline($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""

RUN_STATUS = """
query StockPipelineRunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status }
    ... on Error { message }
  }
}
"""

EARLIER_RUNS = """
query EarlierAirflowRuns($filter: RunsFilter!) {
  runsOrError(filter: $filter, limit: 1) {
    __typename
    ... on Runs { results { runId status } }
    ... on Error { message }
  }
}
"""

RUN_EVENTS = """
query StockPipelineRunEvents($runId: ID!, $cursor: String) {
  logsForRun(runId: $runId, afterCursor: $cursor, limit: 500) {
    __typename
    ... on EventConnection {
      cursor
      hasMore
      events {
        __typename
        ... on ExecutionStepFailureEvent { stepKey message error { message } }
        ... on RunFailureEvent { message }
        ... on EngineEvent { message error { message } }
      }
    }
    ... on Error { message }
  }
}
"""


class DagsterUnreachable(Exception):
    """The webserver did not answer (network, HTTP 5xx): worth waiting or retrying."""


@dataclass
class DagsterSettings:
    url: str
    ui_url: str
    job: str
    location: str
    repository: str
    poll_seconds: float
    timeout_seconds: float
    request_timeout_seconds: float
    unreachable_grace_seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    auth: tuple[str, str] | None = None
    verify: bool | str = True

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/runs/{run_id}"


def _base_url_from_connection(conn: Any) -> str:
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        raise AirflowFailException(f"connection {conn.conn_id!r} has no host")
    if "://" in host:  # a full URL, possibly with a path prefix
        return host
    # For HTTP connections Airflow keeps the URL scheme in `schema` (or in the type for URIs).
    scheme = next(
        (s for s in (conn.schema, conn.conn_type) if s in ("http", "https")),
        "http",
    )
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{host}{port}"


def resolve_settings(environ: dict[str, str] | None = None) -> DagsterSettings:
    """Connection (URL, auth) → Variable (JSON) → env STOCK_ASSETS_DAGSTER_* → defaults."""
    env = os.environ if environ is None else environ
    configured = Variable.get(VARIABLE_KEY, default=None, deserialize_json=True) or {}
    if not isinstance(configured, dict):
        raise AirflowFailException(f"Variable {VARIABLE_KEY!r} must be a JSON object")
    unknown = set(configured) - set(DEFAULTS)
    if unknown:
        raise AirflowFailException(
            f"Variable {VARIABLE_KEY!r} has unknown keys {sorted(unknown)}; "
            f"known: {sorted(DEFAULTS)}"
        )

    def setting(key: str) -> Any:
        if key in configured:
            return configured[key]
        return env.get(f"{ENV_PREFIX}{key.upper()}") or DEFAULTS[key]

    conn_id = env.get(f"{ENV_PREFIX}CONN_ID") or DEFAULT_CONN_ID
    headers: dict[str, str] = {}
    auth: tuple[str, str] | None = None
    verify: bool | str = True
    ui_url = str(setting("ui_url"))
    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        conn = None
    if conn is not None:
        url = _base_url_from_connection(conn)
        extra = conn.extra_dejson or {}
        headers = {str(k): str(v) for k, v in (extra.get("headers") or {}).items()}
        verify = extra.get("verify", True)
        ui_url = ui_url or str(extra.get("ui_url") or "")
        if conn.login:
            auth = (conn.login, conn.password or "")
        source = f"connection {conn_id!r}"
    else:
        url = str(setting("url"))
        source = f"{ENV_PREFIX}URL / Variable {VARIABLE_KEY!r} (no connection {conn_id!r})"
    url = url.rstrip("/")
    settings = DagsterSettings(
        url=url,
        ui_url=(ui_url or url).rstrip("/"),
        job=str(setting("job")),
        location=str(setting("location")),
        repository=str(setting("repository")),
        poll_seconds=float(setting("poll_seconds")),
        timeout_seconds=float(setting("timeout_seconds")),
        request_timeout_seconds=float(setting("request_timeout_seconds")),
        unreachable_grace_seconds=float(setting("unreachable_grace_seconds")),
        headers=headers,
        auth=auth,
        verify=verify,
    )
    log.info("Dagster webserver %s (from %s), job %s", settings.url, source, settings.job)
    return settings


class DagsterClient:
    """The few GraphQL calls the DAG needs, over plain HTTP."""

    def __init__(self, settings: DagsterSettings) -> None:
        self.settings = settings
        self.session = requests.Session()
        self.session.headers.update({"Content-Type": "application/json", **settings.headers})
        self.session.auth = settings.auth
        self.session.verify = settings.verify

    def graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.session.post(
                f"{self.settings.url}/graphql",
                data=json.dumps({"query": query, "variables": variables}),
                timeout=self.settings.request_timeout_seconds,
            )
        except requests.RequestException as exc:
            raise DagsterUnreachable(f"{self.settings.url}: {exc}") from exc
        if response.status_code >= 500:
            raise DagsterUnreachable(f"{self.settings.url}: HTTP {response.status_code}")
        if response.status_code in (401, 403):
            raise AirflowFailException(
                f"{self.settings.url} refused us (HTTP {response.status_code}): check the "
                "connection's login/password or headers"
            )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AirflowFailException(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def _selector(self) -> dict[str, str]:
        return {
            "repositoryLocationName": self.settings.location,
            "repositoryName": self.settings.repository,
            "jobName": self.settings.job,
        }

    def launch_run(self, tags: dict[str, str]) -> str:
        params = {
            "selector": self._selector(),
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        result = self.graphql(LAUNCH_RUN, {"executionParams": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            detail = result.get("message") or "; ".join(
                e["message"] for e in result.get("errors", [])
            )
            # A wrong job/location name or bad config: retrying will not help.
            raise AirflowFailException(f"launchRun failed ({result['__typename']}): {detail}")
        return result["run"]["runId"]

    def earlier_run(self, tags: dict[str, str]) -> tuple[str, str] | None:
        """(run id, status) of the newest run this Airflow run already launched (an earlier
        try), still going or ended; None if it launched none."""
        run_filter = {
            "pipelineName": self.settings.job,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        result = self.graphql(EARLIER_RUNS, {"filter": run_filter})["runsOrError"]
        if result["__typename"] != "Runs":
            raise AirflowFailException(f"listing runs failed: {result.get('message')}")
        runs = result["results"]
        return (runs[0]["runId"], runs[0]["status"]) if runs else None

    def status(self, run_id: str) -> str:
        result = self.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]
        if result["__typename"] != "Run":
            raise AirflowFailException(f"run {run_id}: {result.get('message')}")
        return result["status"]

    def wait(self, run_id: str) -> str:
        """Poll until the run ends; tolerate the webserver being away for a while."""
        settings = self.settings
        deadline = time.monotonic() + settings.timeout_seconds
        unreachable_since: float | None = None
        last_status = None
        while True:
            try:
                status = self.status(run_id)
                unreachable_since = None
            except DagsterUnreachable as exc:
                unreachable_since = unreachable_since or time.monotonic()
                away = time.monotonic() - unreachable_since
                if away > settings.unreachable_grace_seconds:
                    raise AirflowFailException(
                        f"Dagster webserver unreachable for {away:.0f}s while waiting for run "
                        f"{run_id} (it may still be running: {settings.run_url(run_id)}): {exc}"
                    ) from exc
                log.warning("Dagster webserver unreachable (%s); still waiting", exc)
                status = last_status
            if status in TERMINAL_STATUSES:
                return status
            if status != last_status:
                log.info("Dagster run %s is %s", run_id, status)
                last_status = status
            if time.monotonic() > deadline:
                raise AirflowFailException(
                    f"Dagster run {run_id} not finished after {settings.timeout_seconds:.0f}s "
                    f"(still {status}); it goes on in Dagster: {settings.run_url(run_id)}"
                )
            time.sleep(settings.poll_seconds)

    def failure_details(self, run_id: str, max_pages: int = 20) -> list[str]:
        """The failing steps' real errors (the run failure message alone is generic)."""
        details: list[str] = []
        # Errors outside any step (the run worker could not start, the code failed to load).
        engine_errors: list[str] = []
        run_failure: list[str] = []
        cursor = None
        for _ in range(max_pages):
            result = self.graphql(RUN_EVENTS, {"runId": run_id, "cursor": cursor})["logsForRun"]
            if result["__typename"] != "EventConnection":
                break
            for event in result["events"]:
                if event["__typename"] == "ExecutionStepFailureEvent":
                    error = (event.get("error") or {}).get("message") or event.get("message")
                    details.append(f"step {event.get('stepKey')}: {str(error).strip()}")
                elif event["__typename"] == "EngineEvent" and event.get("error"):
                    error = event["error"]["message"].strip().splitlines()[0]
                    engine_errors.append(f"{event.get('message')}: {error}")
                elif event["__typename"] == "RunFailureEvent":
                    run_failure.append(str(event.get("message")).strip())
            if not result.get("hasMore"):
                break
            cursor = result["cursor"]
        return details or engine_errors or run_failure


@dag(
    dag_id=DAG_ID,
    description="Run Dagster's stock_pipeline_job (S3 → CSV → PostgreSQL) and wait for it",
    schedule=None,  # triggered by hand, by an upstream DAG or the API; Dagster's sensor does events
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,  # every run rewrites the same CSV and table
    # Unscheduled, so nothing runs by itself; unpaused means a trigger runs without a click.
    is_paused_upon_creation=False,
    tags=["stock_assets", "dagster"],
    doc_md=__doc__,
)
def stock_pipeline() -> None:
    @task(
        task_id="run_stock_pipeline_job",
        # Retries cover a launch that never reached Dagster. Every try first looks for the
        # Dagster run this Airflow run already started: one still going is waited for, so the
        # pipeline never runs twice at once. An automatic retry (the try that launched it may
        # have died after it reached Dagster) also takes one that succeeded, rather than redo
        # it. A Clear means "run it again": it launches a new run after a success too. A Dagster
        # run that failed ends the task without retries (AirflowFailException); any later try
        # launches a new run.
        retries=1,
        retry_delay=timedelta(minutes=1),
        execution_timeout=timedelta(hours=3),
    )
    def run_stock_pipeline_job() -> dict[str, str]:
        context = get_current_context()
        settings = resolve_settings()
        client = DagsterClient(settings)
        dag_run = context["dag_run"]
        identity = {
            TRIGGER_TAG: "airflow",
            "airflow/dag_id": dag_run.dag_id,
            "airflow/run_id": dag_run.run_id,
        }
        ti = context["ti"]
        tags = {**identity, "airflow/try_number": str(ti.try_number)}
        # An automatic retry, or the first try of this Airflow run or after a Clear? A Clear sets
        # max_tries = try_number + retries (Airflow 3's clear_task_instances) and the next try
        # adds 1 to try_number, so that try, like a DAG run's first, has try_number ==
        # max_tries - retries + 1 (the task SDK computes the same first try for reschedules).
        retrying = ti.try_number > ti.max_tries - (ti.task.retries or 0) + 1

        earlier = client.earlier_run(identity)
        if earlier is not None and earlier[1] not in TERMINAL_STATUSES:
            run_id = earlier[0]
            log.info(
                "Dagster run %s from an earlier try is still going, waiting for it: %s",
                run_id, settings.run_url(run_id),
            )  # fmt: skip
        elif earlier is not None and earlier[1] == "SUCCESS" and retrying:
            run_id = earlier[0]
            log.info(
                "Dagster run %s from an earlier try already ended SUCCESS; taking its result "
                "instead of launching another (a Clear runs the pipeline again): %s",
                run_id, settings.run_url(run_id),
            )  # fmt: skip
        else:
            # None yet, or the earlier one failed or was canceled: a retry, or a Clear after the
            # cause was fixed, is meant to try the pipeline again, not to repeat its failure.
            # Or it succeeded and this try follows a Clear: someone asked for another run.
            if earlier is not None:
                log.info(
                    "Dagster run %s from an earlier try ended %s; launching a new one (try %s, %s)",
                    earlier[0], earlier[1], ti.try_number,
                    "a retry" if retrying else "first since the DAG run started or was cleared",
                )  # fmt: skip
            run_id = client.launch_run(tags)
            log.info("Dagster run %s launched: %s", run_id, settings.run_url(run_id))

        status = client.wait(run_id)
        if status != "SUCCESS":
            try:
                details = client.failure_details(run_id)
            except (DagsterUnreachable, AirflowFailException) as exc:
                details = [f"(could not read the run's events: {exc})"]
            for line in details:
                log.error("Dagster run %s: %s", run_id, line)
            # The first error, kept short: the full text is in the log above and in Dagster.
            summary = details[0][:1000] if details else "no failure event found"
            raise AirflowFailException(
                f"Dagster run {run_id} ended {status}: {summary} — {settings.run_url(run_id)}"
            )
        log.info("Dagster run %s succeeded: %s", run_id, settings.run_url(run_id))
        return {"run_id": run_id, "status": status, "url": settings.run_url(run_id)}

    run_stock_pipeline_job()


stock_pipeline()
