"""PostgreSQL connection strings: SQLAlchemy-style URLs accepted, passwords kept out of sight."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import psycopg2


def psycopg2_dsn(url: str) -> str:
    """Accept SQLAlchemy-style URLs too: `postgresql+psycopg2://…` → `postgresql://…`."""
    return re.sub(r"^postgres(?:ql)?(\+\w+)?://", "postgresql://", url.strip())


def connect(url: str, **kwargs: Any) -> Any:
    """`psycopg2.connect` for any accepted form of `url`. libpq quotes the part of a connection
    string it cannot use (a bad percent-escape in a password, a password with `/` taken for a
    port), and the error would carry it into the run's log and the failure email: quoted parts
    that come from the password are masked."""
    dsn = psycopg2_dsn(url)
    try:
        return psycopg2.connect(dsn, **kwargs)
    except psycopg2.Error as err:
        message = str(err)
        secrets = _password_parts(dsn)
        # libpq may take a piece of the password for something else: "Xy" of "Xy/9z" for a
        # port, "9z@host" of "Xy@9z" for a host name.
        pieces = [p for s in secrets for p in re.split(r"[@/:?#]", s) if len(p) >= 3]
        tails = [p + "@" for s in secrets for p in s.split("@")[1:] if p]

        def mask(quoted: re.Match[str]) -> str:
            text = quoted[1]
            leaks = (
                message.startswith("invalid dsn")
                or any(text and text in s for s in secrets)
                or any(p in text for p in pieces)
                or text.startswith(tuple(tails))
            )
            return '"***"' if leaks else quoted[0]

        masked = _QUOTED.sub(mask, message)
        if masked == message:
            raise
        raise type(err)(masked) from None


_QUOTED = re.compile(r'"([^"]*)"')
_SCHEME = "postgresql://"
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)")


def _user_end(dsn: str) -> int | None:
    """Where a URL's user part ends. Its password may hold `/`, `?`, `#` or `@`, so it is the
    last `@` followed by a host and the database's path; in a URL without that path, the last
    `@` before any `/`. None: no user part."""
    ats = [i for i in range(len(_SCHEME), len(dsn)) if dsn[i] == "@"]
    for at in reversed(ats):
        if re.match(r"[^/?#@]*/", dsn[at + 1 :]):
            return at
    slash = dsn.find("/", len(_SCHEME))
    before = [at for at in ats if slash == -1 or at < slash]
    return before[-1] if before else None


def _password_parts(dsn: str) -> list[str]:
    """Every text a password may sit in, as written and percent-decoded: a URL's user part
    after its first `:`, `password` values of its query or of a `key=value` string."""
    if not dsn.startswith(_SCHEME):
        found = [m[2].strip("'") for m in _KEY_VALUE_PASSWORD.finditer(dsn)]
    else:
        end = _user_end(dsn)
        found = dsn[len(_SCHEME) : end].split(":", 1)[1:] if end is not None else []
        found += [m[2] for m in _QUERY_PASSWORD.finditer(dsn[end or 0 :])]
    return [form for part in found for form in {part, unquote(part)} if form]


def redact_url(url: str) -> str:
    """The connection string without its password, fit for logs and the UI: masked in a URL's
    user part and in a `password` parameter, of a URL's query or of a `key=value` string."""
    dsn = psycopg2_dsn(url)
    if not dsn.startswith(_SCHEME):  # libpq's key=value form
        return _KEY_VALUE_PASSWORD.sub(r"\1***", dsn)
    end = _user_end(dsn)
    if end is not None:
        user, sep, _ = dsn[len(_SCHEME) : end].partition(":")
        dsn = f"{_SCHEME}{user}{sep}{'***' if sep else ''}{dsn[end:]}"
        end = dsn.index("@", len(_SCHEME))
    return dsn[: end or 0] + _QUERY_PASSWORD.sub(r"\1***", dsn[end or 0 :])


# password=secret or password='se cret' (libpq quotes values with spaces; \ escapes inside).
_KEY_VALUE_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
