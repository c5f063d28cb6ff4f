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
    """`psycopg2.connect` for any accepted form of `url`. libpq quotes the part of a connection
    string it cannot use (a bad percent-escape in a password, a password with `/` taken for a
    port), and the error would carry it into the run's log and the failure email: quoted parts
    that come from the password are masked."""
    try:
        return psycopg2.connect(psycopg2_dsn(url), **kwargs)
    except psycopg2.Error as err:
        message = str(err)
        secrets = _password_parts(psycopg2_dsn(url))
        # A piece of the password libpq took for something else ("Xy" of "Xy/9z" for a port),
        # or a value holding a piece of it ("9z@host" of "Xy@9z" for a host name).
        pieces = [p for s in secrets for p in re.split(r"[@/:?#]", s) if len(p) >= 3]

        def mask(quoted: re.Match[str]) -> str:
            text = quoted[1]
            leaks = any(text and text in s for s in secrets) or any(p in text for p in pieces)
            return '"***"' if leaks or message.startswith("invalid dsn") else quoted[0]

        masked = _QUOTED.sub(mask, message)
        if masked == message:
            raise
        raise type(err)(masked) from None


_QUOTED = re.compile(r'"([^"]*)"')


def _password_parts(dsn: str) -> list[str]:
    """Every place a password may sit in `dsn`: a URL's user part after its first `:`, up to
    the last `@` (a password with `/`, `?`, `#` or `@` spans them), and `password` values."""
    if not dsn.startswith("postgresql://"):
        return [m[2].strip("'") for m in _KEY_VALUE_PASSWORD.finditer(dsn)]
    found, rest = [], dsn
    if "@" in dsn:
        user_part, rest = dsn[len("postgresql://") : dsn.rindex("@")], dsn[dsn.rindex("@") :]
        found += user_part.split(":", 1)[1:]
    query = urlsplit(rest).query
    return found + [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "password"]


def redact_url(url: str) -> str:
    """The connection string without its password, fit for logs and the UI: masked in a URL's
    user part and in a `password` parameter, of a URL's query or of a `key=value` string."""
    dsn = psycopg2_dsn(url)
    if not dsn.startswith("postgresql://"):  # libpq's key=value form
        return _KEY_VALUE_PASSWORD.sub(r"\1***", dsn)
    if "@" in dsn:  # the user part runs to the last "@": its password may hold "/", "?" or "#"
        at = dsn.rindex("@")
        user, sep, _ = dsn[len("postgresql://") : at].partition(":")
        dsn = f"postgresql://{user}{sep}{'***' if sep else ''}{dsn[at:]}"
    parts = urlsplit(dsn)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(k == "password" for k, _ in pairs):
        return dsn
    query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*/")
    return parts._replace(query=query).geturl()


# password=secret or password='se cret' (libpq quotes values with spaces; \ escapes inside).
_KEY_VALUE_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
