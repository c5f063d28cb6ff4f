"""Security: no secrets in the repository, least-privilege policies, TLS honoured, identifiers
quoted and values parameterised."""

import glob
import io
import re
import subprocess

import psycopg2
import pytest
from psycopg2 import sql

from stock_assets import iam
from stock_assets.database import psycopg2_dsn, redact_url
from stock_assets.pipeline.load import load_csv
from stock_assets.pipeline.quality import ChecksummingReader
from stock_assets.resources import PostgresResource
from stock_assets.settings import Naming
from stock_assets_tests.conftest import REPO_ROOT
from stock_assets_tests.faults import TcpToUnixProxy

SECRET_PATTERNS = {
    "AWS access key id": re.compile(rb"(?<![A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
    "AWS secret access key": re.compile(
        rb"(?i)aws_?secret_?access_?key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"
    ),
    "private key": re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def tracked_files() -> list[str]:
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    )  # fmt: skip
    return [name for name in listing.stdout.decode().splitlines() if name]


def test_the_scanner_finds_what_it_looks_for():
    fake_id = b"AKIA" + b"Q" * 16
    fake_secret = b"aws_secret_access_key = " + b"x" * 40
    assert SECRET_PATTERNS["AWS access key id"].search(b"key=" + fake_id + b"\n")
    assert SECRET_PATTERNS["AWS secret access key"].search(fake_secret)


def test_no_secret_is_in_the_repository():
    found = []
    for name in tracked_files():
        path = REPO_ROOT / name
        if not path.is_file() or path.suffix in {".xz", ".png"}:
            continue
        data = path.read_bytes()
        found += [f"{name}: {what}" for what, p in SECRET_PATTERNS.items() if p.search(data)]
    assert found == []


def actions_and_resources(policy: dict) -> list[tuple[str, str]]:
    return [(a, r) for s in policy["Statement"] for a in s["Action"] for r in s["Resource"]]


def test_pipeline_policy_grants_only_what_the_pipeline_uses():
    naming = Naming(first_name="Dora", surname="Explorer")
    policy = iam.pipeline_role_policy(naming, account_id="123456789012")
    pairs = actions_and_resources(policy)
    assert not any(a.split(":")[1] == "*" for a, _ in pairs)  # no service-wide wildcards
    source = f"arn:aws:s3:::{naming.source_bucket}"
    writes = {r for a, r in pairs if a == "s3:PutObject"}
    assert writes == {
        f"{source}/Output/historical_stock_data.csv",
        f"{source}/Output/historical_stock_data.parquet",
        f"{source}/Output/rejected/*",
        f"{source}/Output/_shards/*",  # the sharded job's scratch parts
    }
    # Nothing is ever deleted but that scratch (the rejects are kept).
    removals = {r for a, r in pairs if a in ("s3:DeleteObject", "s3:AbortMultipartUpload")}
    assert removals == {f"{source}/Output/_shards/*"}
    assert {a for a, _ in pairs} == {
        "s3:ListBucket",
        "s3:ListBucketMultipartUploads",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "sns:Publish",
        "sns:ListTopics",
    }
    buckets = {r.split(":::")[1].split("/")[0] for a, r in pairs if a.startswith("s3:")}
    assert buckets == {naming.source_bucket, naming.monitored_bucket}
    publish = [r for a, r in pairs if a == "sns:Publish"]
    assert publish == [f"arn:aws:sns:eu-west-1:123456789012:{naming.sns_topic}"]


def test_grader_policy_lets_anyone_put_success_markers_and_nothing_else():
    naming = Naming()
    [statement] = iam.grader_marker_bucket_policy(naming)["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == ["s3:PutObject"]
    assert statement["Resource"] == [f"arn:aws:s3:::{naming.monitored_bucket}/*.SUCCESS"]


def test_sslmode_require_is_honoured(local_stack):
    # Through a TCP hop, where TLS applies (the embedded server only has a Unix socket).
    socket_dir = local_stack.env["STOCK_ASSETS_DATABASE_URL"].split("host=", 1)[1]
    [socket_path] = glob.glob(f"{socket_dir}/.s.PGSQL.*[0-9]")
    proxy = TcpToUnixProxy(socket_path).start()
    try:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        with PostgresResource(database_url=url).connect() as conn:
            assert conn.closed == 0
        # The local server has no TLS: a URL that requires it must refuse to connect.
        required = PostgresResource(database_url=url + "?sslmode=require")
        with pytest.raises(psycopg2.OperationalError, match="SSL"), required.connect():
            pass
    finally:
        proxy.stop()


def test_passwords_never_reach_logs_or_the_ui():
    shown = redact_url("postgresql+psycopg2://app:s3cr3t@db.example.com:5432/prod?sslmode=require")
    assert "s3cr3t" not in shown and "app:***@db.example.com" in shown
    # libpq also takes the password as a URL parameter, and connection strings as key=value.
    shown = redact_url("postgresql://app@db:5432/prod?password=s3cr3t&sslmode=require")
    assert shown == "postgresql://app@db:5432/prod?password=***&sslmode=require"
    shown = redact_url("host=db user=app password=s3cr3t dbname=prod")
    assert shown == "host=db user=app password=*** dbname=prod"
    shown = redact_url("host=db password = 'se cr\\'et' dbname=prod")
    assert shown == "host=db password = *** dbname=prod"
    # And each form still connects as given: only what is shown changes.
    parse = psycopg2.extensions.parse_dsn
    assert parse(psycopg2_dsn("host=db password=x")) == {"host": "db", "password": "x"}
    parsed = parse(psycopg2_dsn("postgresql+psycopg2://u:p@h/d?password=q&sslmode=require"))
    assert parsed == {
        "user": "u",
        "password": "q",
        "host": "h",
        "dbname": "d",
        "sslmode": "require",
    }


def test_hostile_table_names_are_quoted_not_injected(clean_stack, db):
    name = 'stocks"; DROP TABLE pg_class; --'
    csv_body = b"2020-01-02,1.0,1.0,1.0,1.0,1,0.0,0.0,x\n"
    conn = psycopg2.connect(clean_stack.env["STOCK_ASSETS_DATABASE_URL"])
    try:
        result = load_csv(conn, ChecksummingReader(io.BytesIO(csv_body)), table=name)
        assert result.rows_loaded == 1
    finally:
        conn.close()
    with db.cursor() as cur:
        cur.execute(sql.SQL("SELECT company_name FROM {}").format(sql.Identifier(name)))
        assert cur.fetchall() == [("x",)]
        cur.execute(sql.SQL("DROP TABLE {} CASCADE").format(sql.Identifier(name)))


@pytest.mark.parametrize(
    "fields",
    [
        {"cohort": "FTDE2301\n"},  # `$` alone would let the newline through
        {"cohort": "FT DE"},
        {"first_name": "Dora\nX-Injected: 1"},
        {"surname": "Explorer;"},
        {"first_name": "1Dora"},
    ],
)
def test_names_that_would_break_bucket_names_or_subjects_are_refused(fields):
    with pytest.raises(ValueError):
        Naming(**fields)
    assert Naming(cohort="FTDE2301").source_bucket.startswith("ftde2301-mbd-predict-")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:pa%zzss@127.0.0.1:1/prod",
        "postgresql+psycopg2://app@127.0.0.1:1/prod?sslmode=require&password=pa%zzss",
        "postgresql://app:Xy#9%zzss@127.0.0.1:1/prod",  # a "#" that a URL parser cuts at
    ],
)
def test_a_malformed_url_fails_without_showing_its_password(url):
    # libpq quotes the part it cannot parse; the error becomes the step's error, the run's log
    # and the failure email.
    with pytest.raises(psycopg2.Error) as raised, PostgresResource(database_url=url).connect():
        pass
    assert "invalid percent-encoded token" in str(raised.value)
    assert "zzss" not in str(raised.value)


@pytest.mark.parametrize("password", ["Xy#9secret", "Xy?9secret", "Xy/9secret", "Xy@9secret"])
def test_passwords_with_url_delimiters_are_masked_where_they_are_shown(password):
    """Random generators (Secrets Manager's included) put `#`, `?`, `/` and `@` in passwords;
    libpq's user part runs to the `@`, so a URL parser's idea of where it ends is not libpq's."""
    url = f"postgresql://app:{password}@127.0.0.1:1/prod?sslmode=disable"
    shown = redact_url(url)
    assert "9secret" not in shown and shown.startswith("postgresql://app:***@")
    # However the connection fails (a "/" makes libpq take "Xy" for a port), not in its error.
    with pytest.raises(psycopg2.Error) as raised:
        PostgresResource(database_url=url, connect_timeout_seconds=2).connect()
    assert "9secret" not in str(raised.value) and "Xy" not in str(raised.value)


def test_only_the_password_is_masked_around_other_at_signs():
    """An "@" in the query (a password there, an application name) is not the user part's end."""
    assert redact_url("postgresql://db.example.com:5432/prod?password=Xy@9secret") == (
        "postgresql://db.example.com:5432/prod?password=***"
    )
    assert redact_url("postgresql://app:pw@h:5432/db?application_name=etl@host1") == (
        "postgresql://app:***@h:5432/db?application_name=etl@host1"
    )


@pytest.mark.parametrize(
    "user_part", ["app:ab%40cd/efgh9secret", "app:Xy%21z/9secret", "app:Xy@9z@127.0.0.1:1"]
)
def test_encoded_or_short_pieces_of_a_password_are_masked_in_errors(user_part):
    """libpq quotes what it took for a port or a host decoded, and however short."""
    url = f"postgresql://{user_part}@127.0.0.1:1/prod"
    with pytest.raises(psycopg2.Error) as raised:
        PostgresResource(database_url=url, connect_timeout_seconds=2).connect()
    shown = str(raised.value)
    assert not any(piece in shown for piece in ("ab@cd", "Xy!z", '"9z@'))


def test_a_connection_error_is_left_whole():
    # Only what libpq could not parse is masked: a short password does not blank out the host
    # and the port in an ordinary error.
    url = "postgresql://app:1@127.0.0.1:1/prod"
    with pytest.raises(psycopg2.OperationalError) as raised:
        PostgresResource(database_url=url, connect_timeout_seconds=2).connect()
    assert 'connection to server at "127.0.0.1", port 1 failed' in str(raised.value)
