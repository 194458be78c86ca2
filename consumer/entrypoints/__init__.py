"""Entrypoints: how people and machines reach calendar-sync.

The `calsync` command line (`cli`, `cli_ops`), the consumer process (`worker`), the links HTTP
API and its pages (`http_api`, `web/`), the ops HTTP server (`ops_http`: /metrics, health) and
the published schema (`schema`). Here errors become HTTP problems and exit codes, and the
services' answers (models) become JSON bodies, `--json` dumps, text (`text`) and pages. They may
import everything below: `consumer.bootstrap`, the services, the adapters, the domain,
settings and logs. `calsync_dev` is only imported lazily by the `sandbox` and `demo`
commands (the one allowed exception).
"""
