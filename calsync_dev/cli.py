"""`calsync-dev`: the dev tooling's command line (never part of the service's image).

calsync-dev sandbox [--host H] [--port P] [--ca-file F]   the Google sandbox on its own
calsync-dev demo [--state-dir D] [--pace S]               what `make run` runs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        self.exit(2, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="calsync-dev",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    box = sub.add_parser("sandbox", help="run the Google sandbox HTTPS server")
    box.add_argument("--host", default="127.0.0.1")
    box.add_argument("--port", type=int, default=8089)
    box.add_argument("--ca-file", help="where to write the CA that signed its certificate")
    demo = sub.add_parser("demo", help="the whole story on an embedded stack (make run)")
    demo.add_argument("--state-dir", default=".run")
    demo.add_argument("--pace", type=float, default=1.0, help="seconds between story steps")
    docs = sub.add_parser("docs", help="the README's settings table, from the settings")
    docs.add_argument("--write", action="store_true", help="write it into README.md")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sandbox":
        return _sandbox(args.host, args.port, args.ca_file)
    if args.command == "docs":
        from calsync_dev.docs import settings_table, write_readme

        if args.write:
            print("README.md " + ("updated" if write_readme() else "already up to date"))
        else:
            print(settings_table())
        return 0
    from calsync_dev.demo import run_demo

    return run_demo(args.state_dir, args.pace)


def _sandbox(host: str, port: int, ca_file: str | None) -> int:
    from calsync_dev.sandbox.server import SandboxHTTPServer

    server = SandboxHTTPServer((host, port), ca_file=Path(ca_file) if ca_file else None)
    print(f"google sandbox listening on {server.url} (CA: {server.ca_file})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
