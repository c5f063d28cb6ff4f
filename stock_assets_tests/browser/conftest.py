"""Fixtures for driving the Dagster UI in a real browser (Playwright + Debian's Chromium).

One webserver + daemon serves every journey of a module (starting one costs ~10 s and ~700 MB);
each test still gets a fresh S3 and no table through `seeded_stack`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from stock_assets.local.stack import LocalStack
from stock_assets.settings import Naming
from stock_assets_tests.browser.support import (
    CHROMIUM_ARGS,
    CHROMIUM_ENV,
    CHROMIUM_OVERRIDE,
    DEFAULT_CHROMIUM,
    VIEWPORT,
    Screenshots,
    chromium_path,
    unavailable,
)
from stock_assets_tests.deployment import DagsterDeployment

# The sensors' interval in the test deployment: short, so a marker starts a run within seconds.
SENSOR_INTERVAL_SECONDS = "2"


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    path = chromium_path()
    if path is None and CHROMIUM_OVERRIDE:
        unavailable(f"{CHROMIUM_ENV}={CHROMIUM_OVERRIDE} is not an executable")
    if path is None:
        unavailable(
            f"no Chromium at {DEFAULT_CHROMIUM} or on PATH: `apt-get install -y chromium` "
            f"(or set {CHROMIUM_ENV}) to run the browser tests"
        )
    return path


@pytest.fixture(scope="session")
def browser(chromium_executable: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=chromium_executable, headless=True, args=CHROMIUM_ARGS
        )
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def ui_deployment(
    browser: Any, local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DagsterDeployment]:
    # Depending on `browser` first means a machine without Chromium skips before paying for the
    # webserver and daemon.
    deployment = DagsterDeployment(stack=local_stack, home=tmp_path_factory.mktemp("ui_home"))
    deployment.env_overrides = {
        "STOCK_ASSETS_SENSOR_INTERVAL_SECONDS": SENSOR_INTERVAL_SECONDS,
        # Notification emails link to this UI.
        "STOCK_ASSETS_UI_URL": deployment.url,
    }
    deployment.start()
    yield deployment
    deployment.stop()


@pytest.fixture
def ui_stack(seeded_stack: LocalStack, naming: Naming) -> LocalStack:
    """The seeded buckets plus the SNS topic, so the notification sensors' ticks succeed (a
    missing topic would show as failed ticks on the sensors page)."""
    boto3.client("sns").create_topic(Name=naming.sns_topic)
    return seeded_stack


@pytest.fixture(scope="session")
def screenshots() -> Screenshots:
    return Screenshots()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    # Keep each phase's report on the test item, so `page` knows at teardown whether it failed.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def page(
    browser: Any, ui_deployment: DagsterDeployment, screenshots: Screenshots, request: Any
) -> Iterator[Any]:
    """A fresh browser context per test (no state shared between journeys) on the UI's base URL;
    if the test fails, the page as it was is saved next to the journeys' screenshots."""
    context = browser.new_context(base_url=ui_deployment.url, viewport=VIEWPORT)
    # Generous: the UI shares two cores with the webserver, the daemon and the runs.
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        screenshots.save(page, "FAILED-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name))
    context.close()
