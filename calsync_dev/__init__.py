"""Dev tooling, never part of the running service: the Google sandbox, the embedded stack and
the demo, a distribution of its own (`calendar-sync-dev`, calsync_dev/pyproject.toml) with its
own command, `calsync-dev` (`sandbox`, `demo`).

`sandbox/` is an HTTPS stand-in for Google's Calendar and OAuth endpoints (the conservative
reading of Google), `stack` starts the embedded PostgreSQL and Tansu broker, `demo` is
`make run`'s story. `calsync_dev` may import `consumer` (any layer); `consumer` never imports
`calsync_dev` (an import-linter contract, `make lint`): the service's wheel and image do not
carry it.
"""
