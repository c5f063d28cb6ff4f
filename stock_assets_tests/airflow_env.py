"""A virtualenv with Airflow 3 for the DAG tests, built from airflow/requirements.txt.

Airflow does not go into the project's own environment (it would pin half of it and the DAG must
not need dagster anyway). The venv costs ~35 s and ~300 MB once; it is kept in `.venv-airflow`
(or $STOCK_ASSETS_AIRFLOW_VENV) and rebuilt only when the requirements or Python change. A file
lock makes concurrent test sessions wait for one build instead of racing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_DIR = REPO_ROOT / "airflow"
DAGS_FOLDER = AIRFLOW_DIR / "dags"
REQUIREMENTS = AIRFLOW_DIR / "requirements.txt"
DEFAULT_VENV = REPO_ROOT / ".venv-airflow"
STAMP = ".stock_assets-requirements"


def _fingerprint() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def ensure_airflow_venv(path: Path | None = None) -> Path:
    """The venv's folder, built if missing or stale."""
    venv = Path(path or os.environ.get("STOCK_ASSETS_AIRFLOW_VENV") or DEFAULT_VENV)
    venv.parent.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint()
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = venv / STAMP
        if (
            stamp.exists()
            and stamp.read_text() == fingerprint
            and (venv / "bin" / "airflow").exists()
        ):
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
            check=True,
            timeout=1200,
        )  # fmt: skip
        stamp.write_text(fingerprint)  # last: a half-built venv is never taken as done
        return venv


def airflow_env(venv: Path, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for Airflow commands: nothing of this venv or of other Airflows."""
    dropped = ("AIRFLOW", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "STOCK_ASSETS_DAGSTER")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(
        {
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Airflow's default (32) would start that many workers in standalone (~5 GB).
            "AIRFLOW__CORE__PARALLELISM": "2",
            # No __pycache__ inside the repository's DAG folder.
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(extra or {})
    return env
