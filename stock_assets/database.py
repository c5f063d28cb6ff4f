"""PostgreSQL connection strings: SQLAlchemy-style URLs accepted, passwords kept out of sight."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg2


def psycopg2_dsn(url: str) -> str:
    """Accept SQLAlchemy-style URLs too: `postgresql+psycopg2://…` → `postgresql://…`."""
    return re.sub(r"^postgres(?:ql)?(\+\w+)?://", "postgresql://", url.strip())


def connect(url: str, **kwargs: Any) -> Any:
    """`psycopg2.connect` for any accepted form of `url`. A string libpq cannot parse fails with
    the offending part quoted (a bad percent-escape in a password, say), and the error would
    carry it into the run's log and the failure email: those quoted parts are masked."""
    try:
        return psycopg2.connect(psycopg2_dsn(url), **kwargs)
    except psycopg2.ProgrammingError as err:  # what a string libpq cannot parse raises
        message = str(err)
        if not message.startswith("invalid dsn"):
            raise
        raise type(err)(_QUOTED.sub('"***"', message)) from None


_QUOTED = re.compile(r'"[^"]*"')


def redact_url(url: str) -> str:
    """The connection string without its password, fit for logs and the UI: masked in a URL's
    user part and in a `password` parameter, of a URL's query or of a `key=value` string."""
    dsn = psycopg2_dsn(url)
    parts = urlsplit(dsn)
    if parts.scheme != "postgresql":  # libpq's key=value form
        return _KEY_VALUE_PASSWORD.sub(r"\1***", dsn)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k == "password" for k, _ in pairs):
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*/")
    return parts._replace(netloc=netloc, query=query).geturl()


# password=secret or password='se cret' (libpq quotes values with spaces; \ escapes inside).
_KEY_VALUE_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
