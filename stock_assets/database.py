"""PostgreSQL connection strings: SQLAlchemy-style URLs accepted, passwords kept out of sight."""

from __future__ import annotations

import contextlib
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import psycopg2


def psycopg2_dsn(url: str) -> str:
    """Accept SQLAlchemy-style URLs too: `postgresql+psycopg2://…` → `postgresql://…`."""
    return re.sub(r"^postgres(?:ql)?(\+\w+)?://", "postgresql://", url.strip())


def connect(url: str, **kwargs: Any) -> Any:
    """`psycopg2.connect` for any accepted form of `url`. libpq quotes the part of a string it
    cannot parse (a bad percent-escape in a password, say), and the error would carry it into
    the run's log and the failure email: the password is masked in the error."""
    dsn = psycopg2_dsn(url)
    try:
        return psycopg2.connect(dsn, **kwargs)
    except psycopg2.Error as err:
        message = str(err)
        for secret in _passwords(dsn):
            message = message.replace(secret, "***")
        if message == str(err):
            raise
        raise type(err)(message) from None


def _passwords(dsn: str) -> list[str]:
    """Every spelling of the password in `dsn`: as written and decoded, longest first."""
    found = [m.group(2).strip("'") for m in _KEY_VALUE_PASSWORD.finditer(dsn)]
    found += re.findall(r"[?&]password=([^&#]*)", dsn)
    # A string urlsplit refuses is no URL libpq could use either: the other spellings cover it.
    with contextlib.suppress(ValueError):
        found.append(urlsplit(dsn).password or "")
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


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
