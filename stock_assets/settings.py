"""Names of everything the platform touches, derived as the course defines them.

Every name comes from a first name, a surname and an optional cohort prefix, and each one can be
overridden. Pure Python: the Dagster resources and the CLI both build on this.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_FIRST_NAME = "Dora"
DEFAULT_SURNAME = "Explorer"
DEFAULT_REGION = "eu-west-1"
TABLE_NAME = "historical_stocks_data"

STOCKS_PREFIX = "Stocks/"
FILTER_KEY = "CompanyNames/top_companies.txt"
OUTPUT_KEY = "Output/historical_stock_data.csv"
REJECTED_PREFIX = "Output/rejected/"
PARQUET_KEY = "Output/historical_stock_data.parquet"
SCRATCH_PREFIX = "Output/_shards/"  # the sharded mode's parts, one folder per run
SCRIPTS_PREFIX = "Scripts/"
SOURCE_FOLDERS = ("CompanyNames/", "Output/", "Scripts/", "Stocks/")

# The naming settings, declared once: their names (PipelineSettings' config fields too) and
# environment variables. Naming stores the overrides as `*_override`, because its own
# `source_bucket`, `monitored_bucket` and `sns_topic` are the names it derives.
NAMING_ENV = {
    "first_name": "STOCK_ASSETS_FIRST_NAME",
    "surname": "STOCK_ASSETS_SURNAME",
    "cohort": "STOCK_ASSETS_COHORT",
    "source_bucket": "STOCK_ASSETS_SOURCE_BUCKET",
    "monitored_bucket": "STOCK_ASSETS_MONITORED_BUCKET",
    "sns_topic": "STOCK_ASSETS_SNS_TOPIC",
}
_OVERRIDDEN = ("source_bucket", "monitored_bucket", "sns_topic")

_NAME_PART = re.compile(r"[A-Za-z][A-Za-z0-9-]*")  # whole value: fullmatch


def _slug(part: str) -> str:
    return part.strip().lower()


def _field(setting: str) -> str:
    return f"{setting}_override" if setting in _OVERRIDDEN else setting


@dataclass(frozen=True)
class Naming:
    """The course's naming convention, with optional per-name overrides."""

    first_name: str = DEFAULT_FIRST_NAME
    surname: str = DEFAULT_SURNAME
    cohort: str | None = None
    source_bucket_override: str | None = None
    monitored_bucket_override: str | None = None
    sns_topic_override: str | None = None

    def __post_init__(self) -> None:
        for label, value in (("first name", self.first_name), ("surname", self.surname)):
            if not _NAME_PART.fullmatch(value.strip()):
                raise ValueError(
                    f"{label} {value!r} must start with a letter and hold only letters, "
                    "digits and '-' (it becomes part of bucket names and email subjects)"
                )
        # fullmatch: `$` would let a trailing newline into bucket names and email subjects.
        if self.cohort is not None and not re.fullmatch(r"[A-Za-z0-9-]+", self.cohort):
            raise ValueError(f"cohort {self.cohort!r} must hold only letters, digits and '-'")

    @property
    def _stem(self) -> str:
        # Newer cohorts put their code in front and drop "de-": FTDE2301-mbd-predict-dora-explorer
        person = f"{_slug(self.first_name)}-{_slug(self.surname)}"
        return f"{self.cohort}-mbd-predict-{person}" if self.cohort else f"de-mbd-predict-{person}"

    @property
    def source_bucket(self) -> str:
        # S3 bucket names must be lower case, so the cohort code is lowered here too.
        return self.source_bucket_override or f"{self._stem}-s3-source".lower()

    @property
    def monitored_bucket(self) -> str:
        return self.monitored_bucket_override or f"{self._stem}-monitored-bucket".lower()

    @property
    def sns_topic(self) -> str:
        return self.sns_topic_override or f"{self._stem}-SNS"

    def subject(self, outcome: str) -> str:
        """Email subject graders match exactly: `Dora_Explorer_Pipeline_Success`."""
        if outcome not in ("Success", "Failure"):
            raise ValueError(f"outcome must be 'Success' or 'Failure', not {outcome!r}")
        cohort = f"{self.cohort}_" if self.cohort else ""
        return f"{cohort}{self.first_name.strip()}_{self.surname.strip()}_Pipeline_{outcome}"

    def settings(self) -> dict[str, str | None]:
        """The fields by their setting names (see NAMING_ENV), e.g. for PipelineSettings."""
        return {setting: getattr(self, _field(setting)) for setting in NAMING_ENV}

    @classmethod
    def from_settings(cls, settings: Mapping[str, str | None]) -> Naming:
        """From setting names (see NAMING_ENV); a missing or None setting takes the default."""
        return cls(**{_field(k): v for k, v in settings.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Naming:
        env = os.environ if environ is None else environ
        # An empty variable counts as unset.
        return cls.from_settings(
            {setting: env.get(var, "").strip() or None for setting, var in NAMING_ENV.items()}
        )
