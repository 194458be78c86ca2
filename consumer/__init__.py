"""calendar-sync: booking events from Kafka onto Google Calendars.

Layers, each importing only those below it (tests/unit/test_layers.py keeps it so):
`entrypoints` (CLI, HTTP API, ops HTTP, pages) > `bootstrap` (the wiring) > `service`
(sync engine, runner, link lifecycle, operations) > `adapters` (PostgreSQL, Kafka, Google,
crypto, metrics) > `domain` (the contract, planning, rendering, offsets, errors: no I/O).
`settings` and `logs` are importable by all. The old flat module names still import (see
`consumer._moved`).
"""

from consumer import _moved

_moved.install()
