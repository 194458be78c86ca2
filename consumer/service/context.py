"""What a service is handed: the adapters and the sync engine, built once by
`consumer.bootstrap` (or by a unit test, with fakes)."""

from __future__ import annotations

from dataclasses import dataclass

from consumer.adapters.crypto import TokenCipher
from consumer.adapters.google.calendar import GoogleCalendar
from consumer.adapters.google.tokens import TokenProvider
from consumer.adapters.metrics import Metrics
from consumer.adapters.postgres.connections import Connect
from consumer.adapters.postgres.repository import Repository
from consumer.domain.records import Deployment
from consumer.service.calls import GoogleCalls
from consumer.service.ports import RepairQueue
from consumer.service.shutdown import Deadline
from consumer.service.sync import SyncEngine
from consumer.settings import Settings


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    cipher: TokenCipher
    repository: Repository
    google: GoogleCalendar
    tokens: TokenProvider
    calls: GoogleCalls  # the one Google-call policy (quota, retries, deferral, halts)
    engine: SyncEngine
    connect: Connect  # a connection of its own, outside the pools (see connections.py)
    deployment: Deployment  # whose events are ours: every event written is tagged with it
    repairs: RepairQueue  # the repair queue: what backfills and reconciles owe, leased, settled
    # Set by whoever stops the process: closing these waits for nothing past it.
    closing: Deadline | None = None
