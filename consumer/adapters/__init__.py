"""Adapters: one per outside system, each speaking that system's protocol for the service.

PostgreSQL (`postgres/`: the repository, migrations, the sync and link stores, group
membership, the link watcher, the SQL-backed quota), Kafka (`kafka`), Google (`google/`:
Calendar API calls, the batch envelope, the concurrency controller, access tokens, OAuth),
token encryption (`crypto`), metrics (`metrics`), generic call coalescing (`batching`) and
the classification of foreign exceptions as retriable or not (`classify`). Adapters may
import `consumer.domain`, `consumer.settings` and `consumer.logs`, and each other; never
`consumer.service`, `consumer.bootstrap` or `consumer.entrypoints`.
"""
