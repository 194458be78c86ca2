"""The service layer: what calendar-sync does, told through the adapters it is handed.

The sync engine and its ports (`sync`), the Kafka runner and its commit points (`runner`;
its chains in `intake`, its dead letters in `dead_letters`),
repairs (`repairs`), drift reconciliation (`reconcile`), the calendar link lifecycle
(`links`), on-call operations (`operations`, `status`) and progress estimates (`progress`).
Services receive their adapters ready-built, database connections included (from
`consumer.bootstrap`, or fakes in unit tests), and return models (`answers`), never JSON:
the entrypoints render them. They may import `consumer.adapters`, `consumer.domain`,
`consumer.settings` and `consumer.logs`; never `consumer.bootstrap` or `consumer.entrypoints`.
"""
