"""calendar-sync: booking events from Kafka onto Google Calendars.

Layers, each importing only those below it (`make lint` checks it with import-linter, see
`[tool.importlinter]` in pyproject.toml): `entrypoints` (CLI, HTTP API, ops HTTP, pages) >
`bootstrap` (the wiring) > `service` (sync engine, runner, link lifecycle, operations) >
`adapters` (PostgreSQL, Kafka, Google, crypto, metrics) > `domain` (the contract, planning,
rendering, offsets, errors: no I/O). `settings` and `logs` are importable by all.
"""
