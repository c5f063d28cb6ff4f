"""Where the browser comes from, how it is started, and where screenshots go.

Playwright's own browser download does not work here, so the tests drive Debian's Chromium
(`apt-get install -y chromium`). Without it they are skipped with the reason; with
STOCK_ASSETS_REQUIRE_BROWSER=1 (set by CI) a missing browser is a failure instead, so CI cannot
go green by silently skipping them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, NoReturn

import pytest

from stock_assets_tests.deployment import REPO_ROOT

CHROMIUM_ENV = "STOCK_ASSETS_CHROMIUM"
REQUIRE_ENV = "STOCK_ASSETS_REQUIRE_BROWSER"
UPDATE_DOCS_ENV = "STOCK_ASSETS_UPDATE_DOCS_SCREENSHOTS"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Verified flags for Debian's Chromium in a container (FIELD-NOTES "Browser"): no sandbox (we
# run as root), no GPU, and nothing that phones home or slows the first page.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}
ARTIFACTS = REPO_ROOT / "test-artifacts" / "screenshots"
DOCS_SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


# Read once, at import (collection): the `local_stack` fixture clears every STOCK_ASSETS_*
# variable from the environment before the browser fixtures run.
CHROMIUM_OVERRIDE = os.environ.get(CHROMIUM_ENV, "").strip()
REQUIRE_BROWSER = _flag(REQUIRE_ENV)
UPDATE_DOCS = _flag(UPDATE_DOCS_ENV)


def chromium_path() -> str | None:
    """$STOCK_ASSETS_CHROMIUM, else Debian's /usr/bin/chromium, else `chromium` on PATH."""
    configured = CHROMIUM_OVERRIDE
    candidates = [configured] if configured else [DEFAULT_CHROMIUM, shutil.which("chromium")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def unavailable(reason: str, module: bool = False) -> NoReturn:
    """Skip (with the reason) when the browser cannot run; fail instead where it must run."""
    if REQUIRE_BROWSER:
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set, so the browser tests must run)")
    pytest.skip(reason, allow_module_level=module)


class Screenshots:
    """Saves each journey's screenshots under test-artifacts/screenshots/ (gitignored). With
    STOCK_ASSETS_UPDATE_DOCS_SCREENSHOTS=1 the ones the README shows are also copied into
    docs/screenshots/: never by default, so a test run leaves the working tree clean."""

    def __init__(self, directory: Path = ARTIFACTS, docs: Path = DOCS_SCREENSHOTS) -> None:
        self.directory = directory
        self.docs = docs
        self.directory.mkdir(parents=True, exist_ok=True)
        self.update_docs = UPDATE_DOCS

    def save(self, page: Any, name: str, docs_name: str | None = None) -> Path:
        path = self.directory / f"{name}.png"
        page.screenshot(path=str(path))
        if docs_name and self.update_docs:
            self.docs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.docs / docs_name)
        return path
