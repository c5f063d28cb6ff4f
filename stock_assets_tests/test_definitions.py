"""The public interface others build on (spec section 6), and that the code location loads."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey

from stock_assets.definitions import defs
from stock_assets_tests.conftest import REPO_ROOT


@pytest.mark.parametrize(
    "command",
    [
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-m",
            "stock_assets.definitions",
        ],
        [str(Path(sys.executable).parent / "dg"), "check", "defs"],
    ],
    ids=["dagster-definitions-validate", "dg-check-defs"],
)
def test_code_location_validates_with_the_dagster_cli(command, tmp_path):
    # A plain local instance, and no database URL: loading must not need the secret.
    env = {k: v for k, v in os.environ.items() if k != "STOCK_ASSETS_DATABASE_URL"}
    env["DAGSTER_HOME"] = str(tmp_path)
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_asset_keys_and_lineage_are_the_specs():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "raw_stock_files", "top_companies", "historical_stock_data_csv", "historical_stocks_data",
        "historical_stocks",  # the analysts' typed view
        "historical_stock_data_parquet",  # the data scientists' copy (issue 17)
    }  # fmt: skip
    parents = {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
        for k in graph.get_all_asset_keys()
    }
    assert parents["historical_stock_data_csv"] == {"raw_stock_files", "top_companies"}
    assert parents["historical_stocks_data"] == {"historical_stock_data_csv"}
    assert parents["historical_stocks"] == {"historical_stocks_data"}
    assert parents["historical_stock_data_parquet"] == {"historical_stock_data_csv"}


def test_job_and_sensors_have_the_specs_names():
    job = defs.resolve_job_def("stock_pipeline_job")
    # What a run of the job materialises (the asset graph would also list the multi-asset's
    # other keys, selected or not): the filter, the CSV, the table and its typed view; not
    # raw_stock_files (observed by the sensor) nor the Parquet copy (automation's).
    selected = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert selected == {
        "top_companies", "historical_stock_data_csv", "historical_stocks_data", "historical_stocks"
    }  # fmt: skip
    sensors = (
        {s.name for s in defs.resolve_all_sensor_defs()}
        if hasattr(defs, "resolve_all_sensor_defs")
        else {s.name for s in defs.sensors}
    )
    assert {
        "success_marker_sensor",
        "sns_on_pipeline_success",
        "sns_on_pipeline_failure",
        "sns_on_pipeline_canceled",
    } <= sensors


def test_every_asset_is_declared_materialisable_or_observable():
    # The runs of each asset alone are in test_pipeline.py (the table alone, the CSV alone).
    graph = defs.resolve_asset_graph()
    for key in ["top_companies", "historical_stock_data_csv", "historical_stocks_data"]:
        assert graph.get(AssetKey(key)).is_materializable
    assert graph.get(AssetKey("raw_stock_files")).is_observable
