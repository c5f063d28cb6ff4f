"""The Dagster UI, used as a person would: lineage, "Materialize all", sensors, a failed run.

Each journey runs in headless Chromium against a real webserver + daemon on the local stack and
saves screenshots under test-artifacts/screenshots/. What the UI shows is compared with what is
really there: PostgreSQL for the table, S3 for the CSV, the webserver's GraphQL API for runs and
checks. Waits are on content (Playwright's auto-waiting `expect`, or polling the API for a run),
never fixed sleeps.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import pytest
from psycopg2 import sql

from stock_assets.local.sns_inbox import SentMessage, sent_messages
from stock_assets.local.stack import LocalStack
from stock_assets.settings import FILTER_KEY, OUTPUT_KEY, TABLE_NAME, Naming
from stock_assets_tests.browser.support import Screenshots, unavailable
from stock_assets_tests.deployment import DagsterDeployment, wait_until

try:
    from playwright.sync_api import expect
except ImportError:
    unavailable("Playwright is not installed: pip install -e '.[browser]'", module=True)

pytestmark = pytest.mark.browser

ASSETS = [
    "raw_stock_files",
    "top_companies",
    "historical_stock_data_csv",
    "historical_stocks_data",
    "historical_stocks",
    "historical_stock_data_parquet",
]
LINEAGE = {
    ("raw_stock_files", "historical_stock_data_csv"),
    ("top_companies", "historical_stock_data_csv"),
    ("historical_stock_data_csv", "historical_stocks_data"),
    ("historical_stocks_data", "historical_stocks"),
    ("historical_stock_data_csv", "historical_stock_data_parquet"),
}
SENSORS = ["success_marker_sensor", "sns_on_pipeline_success", "sns_on_pipeline_failure"]
MARKER_KEYS_TAG = "stock_assets/marker_keys"
# A run on the sample data takes seconds; the margin is for a loaded 2-core CI machine.
RUN_TIMEOUT_S = 180
UI_TIMEOUT_MS = 60_000


# expect() defaults to 5 s; pages that wait on the webserver need longer on a busy machine.
expect.set_options(timeout=30_000)

# --- helpers -------------------------------------------------------------------------------------

# Reads the rendered lineage graph: every asset node's box and every edge's end points, in the
# SVG's coordinates. An edge starts at its source node's right side and ends (after the arrow
# head) at its target's left side; matching end points to boxes recovers who feeds whom exactly
# as drawn.
GRAPH_JS = """
() => {
  const svg = document.querySelector("svg[class*='svgContainer']");
  if (!svg) return null;
  const nodes = [];
  for (const fo of svg.querySelectorAll("foreignObject")) {
    const name = fo.querySelector("[class*='AssetNode_assetName']");
    if (!name) continue;
    const num = (a) => parseFloat(fo.getAttribute(a));
    nodes.push({name: name.textContent.trim(), x: num("x"), y: num("y"),
                w: num("width"), h: num("height")});
  }
  const edges = [];
  for (const path of svg.querySelectorAll("path[marker-end]")) {
    const n = (path.getAttribute("d").match(/-?\\d+(\\.\\d+)?/g) || []).map(Number);
    if (n.length >= 4) edges.push({start: [n[0], n[1]], end: [n[n.length - 2], n[n.length - 1]]});
  }
  return {nodes, edges};
}
"""


def full_name(label: str) -> str:
    """The asset a node's label names. Zoomed out to fit a wide graph, the UI draws "minimal"
    nodes whose long names are shortened in the middle ("historic…_data_csv")."""
    if "…" not in label:
        return label
    head, tail = label.split("…", 1)
    [name] = [a for a in ASSETS if a.startswith(head) and a.endswith(tail)]
    return name


def _nearest_node(nodes: list[dict[str, Any]], point: list[float], right_side: bool) -> str:
    """The node whose right (or left) side is closest to a point."""

    def distance(node: dict[str, Any]) -> float:
        x = node["x"] + node["w"] if right_side else node["x"]
        top, bottom = node["y"], node["y"] + node["h"]
        dy = 0.0 if top <= point[1] <= bottom else min(abs(point[1] - top), abs(point[1] - bottom))
        return ((point[0] - x) ** 2 + dy**2) ** 0.5

    return full_name(min(nodes, key=distance)["name"])


def drawn_edges(graph: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (
            _nearest_node(graph["nodes"], edge["start"], right_side=True),
            _nearest_node(graph["nodes"], edge["end"], right_side=False),
        )
        for edge in graph["edges"]
    }


def wait_for_graph(page: Any) -> dict[str, Any]:
    """The graph once every node and edge is drawn (they render progressively)."""
    page.wait_for_function(
        f"() => {{ const g = ({GRAPH_JS})(); "
        f"return g && g.nodes.length >= {len(ASSETS)} && g.edges.length >= {len(LINEAGE)}; }}",
        timeout=UI_TIMEOUT_MS,
    )
    graph = page.evaluate(GRAPH_JS)
    # Each node fills in its status (latest event, checks) after the layout: wait for that too.
    nodes = page.locator("svg[class*='svgContainer'] [class*='AssetNode_assetNodeContainer']")
    expect(nodes.get_by_text(re.compile(r"^Loading"))).to_have_count(0, timeout=UI_TIMEOUT_MS)
    return graph


def table_count(db: Any) -> int:
    with db.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE_NAME)))
        return cur.fetchone()[0]


def csv_line_count(s3_client: Any, naming: Naming) -> int:
    body = s3_client.get_object(Bucket=naming.source_bucket, Key=OUTPUT_KEY)["Body"].read()
    return body.count(b"\n")


CHECKS_QUERY = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks {
      name blocking executionForLatestMaterialization { status runId }
    } } } }
  }
}
"""


def check_results(deployment: DagsterDeployment, asset: str) -> dict[str, dict[str, Any]]:
    node = deployment.graphql(CHECKS_QUERY, {"key": {"path": [asset]}})["assetNodeOrError"]
    return {c["name"]: c for c in node["assetChecksOrError"]["checks"]}


def ui_status(status: str) -> str:
    # GraphQL's SUCCEEDED / FAILED / EXECUTION_FAILED, as the UI words them.
    return status.replace("_", " ").capitalize()


SENSOR_RUNS_QUERY = """
query($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""


def wait_for_marker_run(deployment: DagsterDeployment, marker_key: str) -> str:
    """The id of the run the sensor made for this marker, once it exists (polls the API)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    tags = [{"key": "dagster/sensor_name", "value": "success_marker_sensor"}]
    while time.monotonic() < deadline:
        runs = deployment.graphql(SENSOR_RUNS_QUERY, {"tags": tags})["runsOrError"]["results"]
        for run in runs:
            run_tags = {t["key"]: t["value"] for t in run["tags"]}
            if marker_key in json.loads(run_tags.get(MARKER_KEYS_TAG, "[]")):
                return run["runId"]
        time.sleep(1)
    raise TimeoutError(
        f"no run for marker {marker_key} after {RUN_TIMEOUT_S}s:\n"
        f"{deployment.log('daemon')[-3000:]}"
    )


def metadata_value(page: Any, key: str) -> Any:
    """The value cell of one row of an asset page's metadata table."""
    row = page.locator("tr").filter(has=page.get_by_text(key, exact=True))
    return row.locator("td").last


def wait_for_gantt(page: Any, steps: int) -> None:
    """The run's timeline once every step's box is drawn in green (it fills in after the logs)."""
    page.wait_for_function(
        """(n) => {
          const boxes = Array.from(document.querySelectorAll(".chart-element.box"));
          return boxes.length === n &&
            boxes.every((b) => (b.getAttribute("style") || "").includes("accent-green"));
        }""",
        arg=steps,
        timeout=UI_TIMEOUT_MS,
    )


def open_run(page: Any, run_id: str, status: str) -> None:
    page.goto(f"/runs/{run_id}")
    # The header's status tag; the page follows the run live, so this also waits for the end.
    expect(page.get_by_text(status, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)


# --- the journeys --------------------------------------------------------------------------------


def test_asset_graph_shows_the_assets_and_their_lineage(
    page: Any, ui_stack: LocalStack, screenshots: Screenshots
) -> None:
    page.goto("/asset-groups")
    graph = wait_for_graph(page)
    assert sorted(full_name(n["name"]) for n in graph["nodes"]) == sorted(ASSETS)
    assert drawn_edges(graph) == LINEAGE
    screenshots.save(page, "01-asset-graph")

    # The same lineage, in words, on the middle asset's page. The lists render their headings
    # before their links, so wait for the links themselves.
    page.goto("/assets/historical_stock_data_csv")
    for heading, expected in (
        ("Upstream assets", ["raw_stock_files", "top_companies"]),
        ("Downstream assets", ["historical_stock_data_parquet", "historical_stocks_data"]),
    ):
        links = page.get_by_text(heading, exact=True).locator("xpath=..").locator("a")
        expect(links).to_have_count(len(expected))
        assert sorted(links.nth(i).get_attribute("href") for i in range(len(expected))) == [
            f"/assets/{name}" for name in expected
        ]
    screenshots.save(page, "01-asset-lineage-lists")


def test_materialize_all_loads_the_table_and_shows_metadata_and_checks(
    page: Any,
    ui_stack: LocalStack,
    ui_deployment: DagsterDeployment,
    db: Any,
    s3_client: Any,
    naming: Naming,
    screenshots: Screenshots,
) -> None:
    page.goto("/asset-groups")
    wait_for_graph(page)
    page.get_by_role("button", name=re.compile(r"Materialize all")).click()
    toast = page.get_by_text(re.compile(r"Launched run \w+"))
    expect(toast).to_be_visible()
    screenshots.save(page, "02-materialize-all-launched")
    # The toast's "View" opens the run, as a user would follow it.
    page.get_by_role("button", name="View", exact=True).or_(
        page.get_by_role("link", name="View", exact=True)
    ).first.click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    run_id = page.url.rsplit("/runs/", 1)[1].split("?", 1)[0]

    expect(page.get_by_text(run_id[:8]).first).to_be_visible()
    assert ui_deployment.wait_for_run(run_id, timeout=RUN_TIMEOUT_S) == "SUCCESS", (
        ui_deployment.log("daemon")[-3000:]
    )
    # Open it afresh (as a returning user would; also drops the toast from the screenshot).
    open_run(page, run_id, "Success")
    # "Materialize all" leaves the source's observation out: the one step that reads the filter
    # and makes the CSV, the table and its view, then the Parquet copy.
    expect(page.get_by_text("Succeeded (2)")).to_be_visible(timeout=UI_TIMEOUT_MS)
    wait_for_gantt(page, steps=2)
    screenshots.save(page, "02-run-success", docs_name="successful-run.png")

    # The table is really loaded: exactly the CSV's rows.
    rows = table_count(db)
    assert rows > 0 and rows == csv_line_count(s3_client, naming)

    # A run launched from the graph is a pipeline run too: it gets its success email.
    def success_email() -> list[SentMessage]:
        return [
            m
            for m in sent_messages(ui_stack.moto.endpoint_url, naming.sns_topic)
            if m.subject == naming.subject("Success") and run_id in m.message
        ]

    assert len(wait_until(success_email, "the success email of the UI's run")) == 1

    # The graph now shows the materialisations and passed checks.
    page.goto("/asset-groups")
    wait_for_graph(page)
    expect(page.get_by_text("Never materialized")).to_have_count(0, timeout=UI_TIMEOUT_MS)
    screenshots.save(page, "02-asset-graph-after-run", docs_name="asset-graph.png")

    # The CSV asset's page: row count and the run's own metadata, reconciling with the table.
    page.goto("/assets/historical_stock_data_csv")
    row_count = page.get_by_text("Row count", exact=True).locator("xpath=..")
    expect(row_count).to_contain_text(f"{rows:,}", timeout=UI_TIMEOUT_MS)
    expect(metadata_value(page, "stock_assets/rows_read")).to_have_text(re.compile(r"^\s*\d+\s*$"))
    rows_read = int(metadata_value(page, "stock_assets/rows_read").inner_text())
    rows_rejected = int(metadata_value(page, "stock_assets/rows_rejected").inner_text())
    assert rows_read == rows + rows_rejected
    metadata_value(page, "stock_assets/rows_read").scroll_into_view_if_needed()
    screenshots.save(page, "02-asset-csv-metadata")

    # The table asset's page names the run that loaded it.
    page.goto("/assets/historical_stocks_data")
    expect(page.get_by_text("Row count", exact=True).locator("xpath=..")).to_contain_text(
        f"{rows:,}", timeout=UI_TIMEOUT_MS
    )
    expect(metadata_value(page, "stock_assets/source_run_id")).to_have_text(run_id)
    expect(metadata_value(page, "rows_expected_from_csv")).to_have_text(str(rows))
    metadata_value(page, "stock_assets/source_run_id").scroll_into_view_if_needed()
    screenshots.save(page, "02-asset-table-metadata")

    # Every check's result, as recorded for this run, is what the Checks tab shows; the blocking
    # ones passed (the run succeeded), the warnings are whatever the sample data deserves.
    for asset, docs_name in (
        ("historical_stock_data_csv", "asset-checks.png"),
        ("historical_stocks_data", None),
    ):
        recorded = check_results(ui_deployment, asset)
        assert recorded, f"no checks recorded for {asset}"
        page.goto(f"/assets/{asset}?view=checks")
        expect(page.get_by_text(f"Checks ({len(recorded)})")).to_be_visible()
        for name, check in recorded.items():
            execution = check["executionForLatestMaterialization"]
            assert execution and execution["runId"] == run_id, (name, execution)
            if check["blocking"]:
                assert execution["status"] == "SUCCEEDED", (name, execution)
            row = page.locator("[class*='checkRow']").filter(
                has=page.get_by_title(name, exact=True)
            )
            expect(row).to_contain_text(ui_status(execution["status"]))
        screenshots.save(page, f"02-asset-checks-{asset}", docs_name=docs_name)


def test_sensors_run_and_a_success_marker_starts_a_recorded_run(
    page: Any,
    ui_stack: LocalStack,
    ui_deployment: DagsterDeployment,
    s3_client: Any,
    naming: Naming,
    screenshots: Screenshots,
) -> None:
    page.goto("/automation")
    for name in SENSORS:
        row = page.locator("[class*='ListItem_listItem_']").filter(
            has=page.get_by_text(name, exact=True)
        )
        expect(row).to_have_count(1)
        # The on/off switch renders disabled until the sensor's state has loaded.
        switch = row.locator("label[class*='formatSwitch'] input[type=checkbox]")
        expect(switch).to_be_enabled()
        expect(switch).to_be_checked()
    screenshots.save(page, "03-sensors-running")

    # Drop a marker, as the upstream process (or `stock-assets trigger`) does.
    marker_key = f"ui-test/{uuid.uuid4().hex[:8]}/.SUCCESS"
    s3_client.put_object(Bucket=naming.monitored_bucket, Key=marker_key, Body=b"")
    run_id = wait_for_marker_run(ui_deployment, marker_key)
    assert ui_deployment.wait_for_run(run_id, timeout=RUN_TIMEOUT_S) == "SUCCESS", (
        ui_deployment.log("daemon")[-3000:]
    )

    # The runs list shows it, launched by the sensor, with the marker in its tags.
    page.goto("/runs")
    row = page.locator("[class*='RunsFeedRow_rowGrid']").filter(
        has=page.locator(f"a[href='/runs/{run_id}']")
    )
    expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(row).to_contain_text("stock_pipeline_job")
    expect(row).to_contain_text("success_marker")  # "Launched by", truncated in the cell
    expect(row).to_contain_text(
        re.compile(f"{re.escape(MARKER_KEYS_TAG)}: .*{re.escape(marker_key)}")
    )
    expect(row).to_contain_text("Success")
    screenshots.save(page, "03-runs-list-marker-run", docs_name="runs-list.png")

    open_run(page, run_id, "Success")
    # The sensor observed raw_stock_files before launching: the job itself is one step, which
    # reads the filter and makes the CSV and the table.
    wait_for_gantt(page, steps=1)
    screenshots.save(page, "03-marker-run")


def test_a_failed_run_shows_the_failing_steps_error(
    page: Any,
    ui_stack: LocalStack,
    ui_deployment: DagsterDeployment,
    s3_client: Any,
    naming: Naming,
    screenshots: Screenshots,
) -> None:
    s3_client.delete_object(Bucket=naming.source_bucket, Key=FILTER_KEY)
    run_id = ui_deployment.launch_run()
    assert ui_deployment.wait_for_run(run_id, timeout=RUN_TIMEOUT_S) == "FAILURE"

    open_run(page, run_id, "Failure")
    errored = page.locator("[class*='GanttStatusPanel_stepItemContainer']").filter(
        has_text="historical_stock_data"
    )
    expect(page.get_by_text("Errored (1)")).to_be_visible()
    # Select the failed step: the event log narrows to that step's events.
    errored.click()
    failure = page.locator("[class*='LogsRowComponents_row__']").filter(has_text="STEP_FAILURE")
    expect(failure).to_have_count(1)
    expect(failure).to_contain_text("historical_stock_data")
    expect(failure).to_contain_text(f"{FILTER_KEY} does not exist")
    screenshots.save(page, "04-failed-run-step-error", docs_name="failed-run.png")
