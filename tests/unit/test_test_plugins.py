"""The test plugins' own rules: which stack a session runs on (CALSYNC_TEST_STACK), and the
settings -> environment map reading back as the same settings in a process we start."""

from __future__ import annotations

import os
import socket
import time

import pytest

from consumer.settings import Settings, settings_env
from tests.plugins import stack


def test_without_docker_auto_is_embedded_and_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "_docker_socket_path", lambda: None)
    started = time.monotonic()
    choice = stack.choose_stack({})
    assert choice.name == "embedded" and choice.why.startswith("auto: no Docker")
    assert time.monotonic() - started < 0.5
    assert "calsync test stack: embedded" in choice.header


def test_containers_without_docker_stops_the_session_saying_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stack, "_docker_socket_path", lambda: None)
    with pytest.raises(pytest.UsageError, match="CALSYNC_TEST_STACK=containers, but no Docker"):
        stack.choose_stack({"CALSYNC_TEST_STACK": "containers"})
    with pytest.raises(pytest.UsageError, match="expected one of embedded, containers"):
        stack.choose_stack({"CALSYNC_TEST_STACK": "docker"})


def test_a_docker_engine_that_does_not_answer_is_no_docker() -> None:
    # A port nothing listens on: refused at once, the auto choice stays embedded.
    reachable, found = stack.docker_reachable_at("tcp://127.0.0.1:9")
    assert not reachable and "does not answer" in found


def test_auto_takes_containers_when_docker_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "docker_reachable", lambda: (True, "Docker engine at x"))
    assert stack.choose_stack({}).name == "containers"
    assert stack.choose_stack({"CALSYNC_TEST_STACK": "embedded"}).name == "embedded"


def test_the_settings_environment_reads_back_as_the_same_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Settings(
        database_url="postgresql://u@h:1/d?sslmode=disable",
        topic="t.b",
        retry_budget_s=3.0,
        retry_initial_s=0.05,
        token_key="k1,k2",
        admin_token="secret",
        google_ca_bundle="/ca.pem",
        metrics_port=0,
        kafka_session_timeout_s=3.0,
        log_format="json",
        instance_id=None,
    )
    variables = settings_env(original)
    assert "CALSYNC_INSTANCE_ID" not in variables  # None: left to its default
    assert variables["CALSYNC_ADMIN_TOKEN"] == "secret"
    for name in list(os.environ):
        if name.startswith("CALSYNC_"):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_the_unit_tier_has_no_network() -> None:
    with pytest.raises(OSError, match="the unit tier has no network"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1: never routed
