"""The naming settings are declared once (settings.NAMING_ENV) and every other spelling of them
agrees: Naming's fields, PipelineSettings' config fields, and the environment."""

from dataclasses import fields

from stock_assets.resources import PipelineSettings
from stock_assets.settings import NAMING_ENV, Naming


def test_naming_fields_pipeline_settings_and_environment_agree():
    assert {f.name.removesuffix("_override") for f in fields(Naming)} == set(NAMING_ENV)
    assert set(NAMING_ENV) <= set(PipelineSettings.model_fields)
    assert all(var == f"STOCK_ASSETS_{name.upper()}" for name, var in NAMING_ENV.items())


def test_naming_round_trips_through_settings_and_environment(monkeypatch):
    given = Naming("Ada", "Lovelace", "FTDE2301", "src", "mon", "topic")
    assert Naming.from_settings(given.settings()) == given
    assert PipelineSettings(**given.settings()).naming == given
    for name, value in given.settings().items():
        monkeypatch.setenv(NAMING_ENV[name], f" {value} ")
    assert Naming.from_env() == given
    assert PipelineSettings.from_env().naming == given


def test_unset_or_empty_settings_take_the_defaults(monkeypatch):
    for var in NAMING_ENV.values():
        monkeypatch.setenv(var, "  ")
    assert Naming.from_env() == Naming() == Naming.from_settings({})
    assert PipelineSettings.from_env().naming == Naming()


def test_every_name_follows_the_person_and_the_overrides():
    """The course's names for someone else than the default person, and the overrides."""
    ada = Naming("Ada", "Lovelace")
    assert ada.source_bucket == "de-mbd-predict-ada-lovelace-s3-source"
    assert ada.monitored_bucket == "de-mbd-predict-ada-lovelace-monitored-bucket"
    assert ada.sns_topic == "de-mbd-predict-ada-lovelace-SNS"
    assert ada.subject("Failure") == "Ada_Lovelace_Pipeline_Failure"
    cohort = Naming("Ada", "Lovelace", "FTDE2301")
    assert cohort.source_bucket == "ftde2301-mbd-predict-ada-lovelace-s3-source"
    assert cohort.subject("Success") == "FTDE2301_Ada_Lovelace_Pipeline_Success"
    overridden = Naming.from_settings({"source_bucket": "x-src", "sns_topic": "t"})
    assert (overridden.source_bucket, overridden.sns_topic) == ("x-src", "t")
    assert overridden.monitored_bucket == Naming().monitored_bucket


def test_the_monitored_bucket_override_is_the_bucket_named(monkeypatch):
    """Spec §2 and §6: the marker bucket can be overridden too, in settings and by
    STOCK_ASSETS_MONITORED_BUCKET; the other names stay derived."""
    assert Naming.from_settings({"monitored_bucket": "m"}).monitored_bucket == "m"
    assert PipelineSettings(monitored_bucket="m").naming.monitored_bucket == "m"
    monkeypatch.setenv("STOCK_ASSETS_MONITORED_BUCKET", "markers-elsewhere")
    for naming in (Naming.from_env(), PipelineSettings.from_env().naming):
        assert naming.monitored_bucket == "markers-elsewhere"
        assert naming.source_bucket == Naming().source_bucket
