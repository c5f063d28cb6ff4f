"""The SQL the pipeline runs, shipped as files in `pipeline/sql/` (and uploaded to `Scripts/`)."""

from __future__ import annotations

from importlib import resources

from psycopg2 import sql


def read_sql(name: str) -> str:
    return resources.files("stock_assets.pipeline").joinpath("sql", name).read_text()


def statements(name: str, **identifiers: str) -> list[sql.Composed]:
    """The statements of a packaged .sql file, each `{key}` filled in with `identifiers[key]`
    quoted as an identifier (never by string formatting)."""
    text = "\n".join(
        line for line in read_sql(name).splitlines() if not line.lstrip().startswith("--")
    )
    quoted = {key: sql.Identifier(value) for key, value in identifiers.items()}
    return [sql.SQL(part.strip()).format(**quoted) for part in text.split(";") if part.strip()]
