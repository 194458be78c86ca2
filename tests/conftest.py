"""The suite's plugins, and the names tests once imported from here.

Shared builders and fixtures live in pytest plugins (tests/plugins/): the session's stack
(`postgres`, `broker`, `sandbox`: embedded, or containers where Docker runs), `Env` and its
`env` fixture, the one booking-event builder, the one settings -> environment map, the one
way to make a fresh database. Test modules import from those modules; the names below are
re-exported for code written when they lived here.

The tiers: tests/unit (no server of any kind, seconds), tests/integration (the real broker,
PostgreSQL and the Google sandbox), tests/e2e (whole processes: the CLI, `calsync consume`
and `calsync serve`, the pages in a browser, the deployment files).
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from psycopg.rows import dict_row

from calsync_dev.sandbox import SandboxClient, start_in_thread
from calsync_dev.stack import (
    EmbeddedBroker,
    EmbeddedPostgres,
    free_port,
    start_broker,
    start_postgres,
    wait_for_port,
)
from consumer import links
from consumer.adapters.crypto import TokenCipher
from consumer.adapters.kafka import ensure_topics
from consumer.adapters.postgres.migrations import migrate
from consumer.entrypoints.worker import consume
from consumer.settings import Settings
from tests.plugins.database import TEMPLATE_DB, fresh_database
from tests.plugins.environment import (
    ADMIN_TOKEN,
    PROCESS_SETTINGS,
    ROOT,
    SESSION_TIMEOUT_S,
    TOKEN_KEY,
    Env,
    calsync,
    env,
    wait_until,
)
from tests.plugins.events import booking_event, booking_model
from tests.plugins.settings_env import settings_env
from tests.plugins.stack import CLIENT_ID, CLIENT_SECRET, broker, postgres, sandbox

pytest_plugins = [
    "tests.plugins.events",
    "tests.plugins.settings_env",
    "tests.plugins.database",
    "tests.plugins.stack",
    "tests.plugins.environment",
    "tests.plugins.ops_http",
]

__all__ = [
    "ADMIN_TOKEN",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "PROCESS_SETTINGS",
    "ROOT",
    "SESSION_TIMEOUT_S",
    "TEMPLATE_DB",
    "TOKEN_KEY",
    "AIOKafkaConsumer",
    "AIOKafkaProducer",
    "EmbeddedBroker",
    "EmbeddedPostgres",
    "Env",
    "SandboxClient",
    "Settings",
    "TokenCipher",
    "TopicPartition",
    "booking_event",
    "booking_model",
    "broker",
    "calsync",
    "consume",
    "dict_row",
    "ensure_topics",
    "env",
    "free_port",
    "fresh_database",
    "links",
    "migrate",
    "postgres",
    "psycopg",
    "pytest",
    "sandbox",
    "settings_env",
    "start_broker",
    "start_in_thread",
    "start_postgres",
    "uuid",
    "wait_for_port",
    "wait_until",
]
