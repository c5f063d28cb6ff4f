"""docker/docker-compose.yaml as the tests read it: its services, and its commands made local.

There is no Docker engine here, so the tests run each container's command line from the compose
file itself, changing only what a container changes: the bind address (0.0.0.0 → 127.0.0.1), the
port (a free one), paths inside the image (→ the repository), and the executable (→ this venv).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yaml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
BIN = Path(sys.executable).parent

# Where docker/Dockerfile puts things, and where they are in the repository.
CONTAINER_PATHS = {
    "/opt/dagster/app/workspace.yaml": str(DOCKER_DIR / "workspace.yaml"),
}
HOST_FLAGS = ("-h", "-H", "--host")
PORT_FLAGS = ("-p", "--port")


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service(name: str) -> dict[str, Any]:
    return load_compose()["services"][name]


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=VALUE lines of a compose env file (comments and blanks skipped, no interpolation)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


def interpolated_names(text: str) -> set[str]:
    """Every ${NAME...} a compose file interpolates."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def required_names(text: str) -> set[str]:
    """The ${NAME:?...} / ${NAME?...} ones: compose refuses to start without them."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text))


def localise(command: list[str], *, port: int | None = None, host: str = "127.0.0.1") -> list[str]:
    """A compose command as it runs here: loopback, a free port, repository paths, this venv."""
    local: list[str] = []
    previous = None
    for arg in command:
        if previous in HOST_FLAGS:
            arg = host
        elif previous in PORT_FLAGS and port is not None:
            arg = str(port)
        else:
            arg = CONTAINER_PATHS.get(arg, arg)
        local.append(arg)
        previous = arg if arg in HOST_FLAGS + PORT_FLAGS else None
    executable = local[0]
    if executable == "python":
        local[0] = sys.executable
    elif (BIN / executable).exists():
        local[0] = str(BIN / executable)
    return local


def healthcheck(name: str, port: int | None = None) -> list[str]:
    """A service's healthcheck test as a command line (CMD form), made local."""
    test = service(name)["healthcheck"]["test"]
    assert test[0] == "CMD", f"{name}: healthcheck must use the exec form"
    command = list(test[1:])
    if port is not None and command[:2] == ["python", "-c"]:
        # The probe's URL names the container port; here the process listens on `port`.
        container_port = str(service(name)["ports"][0]).rsplit(":", 1)[1]
        command[2] = command[2].replace(f":{container_port}/", f":{port}/")
    return localise(command, port=port)
