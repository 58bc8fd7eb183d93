"""Settings from the environment: Kafka security is checked at the edge, naming the variable."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.kafka import client as kafka
from streams.settings import Settings


def test_plaintext_by_default_with_no_tls_and_no_sasl() -> None:
    options = kafka.connection(Settings.from_env({}))
    assert options == {"bootstrap_servers": "127.0.0.1:19092", "security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize(("env", "variable", "reason"), [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL", "Input should be"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": "x"},
     "KAFKA_SASL_USERNAME", "is required with SASL_SSL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"},
     "KAFKA_SASL_PASSWORD", "is required with SASL_PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI",
      "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_MECHANISM",
     "Input should be"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/etc/hostname"},
     "KAFKA_SSL_KEYFILE", "needs both"),
    ({"KAFKA_SSL_CAFILE": "/etc/hostname"}, "KAFKA_SSL_CAFILE", "is PLAINTEXT"),
])
def test_a_bad_security_setting_names_its_variable(env: dict[str, str], variable: str,
                                                   reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        Settings.from_env(env)
    assert info.value.path == variable


def test_sasl_ssl_gives_every_client_tls_and_credentials() -> None:
    settings = Settings.from_env({
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "s3cret"})
    options = kafka.connection(settings)
    assert isinstance(options.pop("ssl_context"), ssl.SSLContext)
    assert options == {"bootstrap_servers": "127.0.0.1:19092", "security_protocol": "SASL_SSL",
                       "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "svc",
                       "sasl_plain_password": "s3cret"}
    assert "s3cret" not in repr(settings)


def test_a_missing_tls_file_is_named_when_a_client_is_made() -> None:
    settings = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL",
                                  "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"})
    with pytest.raises(ConfigError, match="is not a readable file") as info:
        kafka.connection(settings)
    assert info.value.path == "KAFKA_SSL_CAFILE"


def test_a_file_that_is_not_a_certificate_is_a_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    settings = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL",
                                  "KAFKA_SSL_CAFILE": str(bogus)})
    with pytest.raises(ConfigError, match="cannot load the TLS files"):
        kafka.connection(settings)


def test_min_insync_replicas_may_not_exceed_the_replication_factor() -> None:
    with pytest.raises(ConfigError, match="exceeds REPLICATION_FACTOR 1") as info:
        Settings.from_env({"MIN_INSYNC_REPLICAS": "2"})
    assert info.value.path == "MIN_INSYNC_REPLICAS"
    assert Settings.from_env({"MIN_INSYNC_REPLICAS": "2", "REPLICATION_FACTOR": "3"})


@pytest.mark.parametrize(("text", "step_s"), [("1", 1.0), ("0.25", 0.25), ("0.05", 0.05),
                                              ("3600", 3600.0)])
def test_the_tick_interval_takes_fractions_of_a_second(text: str, step_s: float) -> None:
    assert Settings.from_env({"TICK_INTERVAL_S": text}).tick_interval_s == step_s


@pytest.mark.parametrize("text", ["0.04", "0", "-1", "0.2505", "3601", "fast"])
def test_a_bad_tick_interval_names_its_variable(text: str) -> None:
    with pytest.raises(ConfigError, match="TICK_INTERVAL_S"):
        Settings.from_env({"TICK_INTERVAL_S": text})
