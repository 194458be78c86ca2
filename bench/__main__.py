"""`make bench`: calendar-sync's consumer against a naive baseline, and at Google's quota,
with the Google sandbox serving a batch's calls one after another (`sequential`) and side
by side (`parallel`): every scenario runs in both modes.

Everything real: embedded PostgreSQL, the Tansu broker, the Google sandbox in its own
process (`calsync-dev sandbox`), our consumer as users run it (`calsync consume`, default
settings). The naive baseline is written here (bench/naive.py): one message at a time, one
Google call at a time, one transaction and one offset commit per message; it never batches,
so it runs once, whatever the mode.

1. Unthrottled, 50 ms per Google call: 20,000 events over 2,000 bookings, 2 links each
   (throughput, CPU per link-operation); then a 100,000-message backlog for peak RSS.
2. Quota 3,000/min per project and 600/min per account over 20 accounts, Google taking
   300 ms a call (median; 1 s at the 99th percentile), a backlog, with one consumer process
   and with three: the share of the quota used, the share of calls refused.
3. A steady inflow at 70% of that quota: latency from the message timestamp to the result
   recorded.
4. One activity's two accounts refused by Google for 10 minutes (429 rateLimitExceeded on one,
   403 quotaExceeded on the other), a backlog of 10 x CALSYNC_MAX_IN_FLIGHT of their messages
   ahead and more arriving all along: the other accounts' bookings, arriving meanwhile, must
   reach their calendars with p99 under 2 s (same quota and latency as 2 and 3).
5. One account whose calls Google answers 503 for 10 minutes, a backlog of 10 x
   CALSYNC_MAX_IN_FLIGHT of its messages ahead and more arriving all along: the other
   accounts' bookings must reach their calendars with p99 under 2 s (as in 4).
6. Scale: ten years of a large company filled directly in PostgreSQL (1,000,000 bookings,
   2,000 links, 1,000,000 repairs waiting, 10,000,000 results; under 3 minutes): peak RSS
   of a backfill of 200,000 bookings and of a reconcile of every link, the backfill's
   Google calls, one repair poll and the repair loop at the quotas with that backlog, and
   a retention pass's cost to the consumer's latency (bench/scale.py).

Prints one table, the targets marked MET or MISSED, and writes them as JSON and Markdown
(bench-results/latest.*).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict

from bench.common import ROOT, STATE, Row
from bench.scale import scenario_6
from bench.scenarios import (
    Bench,
    scenario_1,
    scenario_1_backlog,
    scenario_1_naive,
    scenario_2,
    scenario_3,
    scenario_4,
    scenario_5,
)
from calsync_dev.sandbox import SandboxClient
from calsync_dev.stack import free_port, start_broker, start_postgres, wait_for_port
from consumer.adapters.crypto import TokenCipher
from consumer.settings import Settings

CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"
MODES = ("sequential", "parallel")
RATIO_TARGET = 40.0
CPU_TARGET_MS = 1.0
RSS_TARGET_MB = 300.0
SHARE_TARGET = 0.95
REJECTED_TARGET = 0.01
P99_TARGET_S = 2.0


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(rows: list[Row], machine: str, extra: list[str] | None = None) -> str:
    lines = [
        f"machine: {machine}",
        "",
        "| scenario | batches served | consumer | link-ops | seconds | ops/s | CPU ms/op |"
        " peak RSS MB | share of quota | rejected | p50 s | p99 s | limit | calls/request |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        " ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.mode} | {r.consumer} | {r.link_ops} | {r.seconds:.1f} | "
            f"{r.ops_per_s:.1f} | {_cell(r.cpu_ms_per_op, '.2f')} | "
            f"{_cell(r.peak_rss_mb, '.0f')} | {_cell(r.quota_share, '.1%')} | "
            f"{_cell(r.rejected_share, '.2%')} | {_cell(r.latency_p50_s, '.2f')} | "
            f"{_cell(r.latency_p99_s, '.2f')} | {_cell(r.limit, 'd')} | "
            f"{_cell(r.calls_per_request, '.1f')} |"
        )
    lines += ["", *targets(rows), *(extra or []), "", "Notes:"]
    lines += [f"- {r.scenario} [{r.mode}], {r.consumer}: {r.note}" for r in rows if r.note]
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[str]:
    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    naive = next((r for r in rows if r.consumer == "naive baseline"), None)
    out = []
    for mode in MODES:
        mine = [r for r in rows if r.mode == mode]
        ours = next((r for r in mine if r.scenario.startswith("1: unthrottled")), None)
        if ours and naive:
            ratio = ours.ops_per_s / naive.ops_per_s
            out.append(
                f"[{mode}] 1: ratio (ours / naive) {ratio:.1f}x, target at least "
                f"{RATIO_TARGET:.0f}x: {verdict(ratio >= RATIO_TARGET)}"
            )
        if ours and ours.cpu_ms_per_op is not None:
            cpu = ours.cpu_ms_per_op
            out.append(
                f"[{mode}] 1: CPU per link-operation {cpu:.2f} ms, target at most "
                f"{CPU_TARGET_MS:.0f} ms: {verdict(cpu <= CPU_TARGET_MS)}"
            )
        rss = [r.peak_rss_mb for r in mine if r.scenario.startswith("1") and r.peak_rss_mb]
        if rss:
            out.append(
                f"[{mode}] 1: peak RSS {max(rss):.0f} MB (also with the 100,000 "
                f"backlog), target under {RSS_TARGET_MB:.0f} MB: "
                f"{verdict(max(rss) < RSS_TARGET_MB)}"
            )
        for r in mine:
            if r.scenario.startswith("2") and r.quota_share is not None:
                rejected = r.rejected_share or 0.0
                ok = r.quota_share >= SHARE_TARGET and rejected < REJECTED_TARGET
                out.append(
                    f"[{mode}] {r.scenario}: {r.quota_share:.1%} of the quota, "
                    f"{rejected:.2%} rejected; target at least {SHARE_TARGET:.0%} and "
                    f"under {REJECTED_TARGET:.0%}: {verdict(ok)}"
                )
            if r.scenario.startswith(("3", "4", "5")) and r.latency_p99_s is not None:
                out.append(
                    f"[{mode}] {r.scenario}: p99 {r.latency_p99_s:.2f} s, target "
                    f"under {P99_TARGET_S:.0f} s: "
                    f"{verdict(r.latency_p99_s < P99_TARGET_S)}"
                )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="make bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bookings", type=int, default=2000)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--naive-messages", type=int, default=300)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument(
        "--quota-messages",
        type=int,
        default=2000,
        help="scenario 2's backlog, in messages (2 link-operations each)",
    )
    parser.add_argument("--steady-seconds", type=float, default=40)
    parser.add_argument(
        "--refused-seconds",
        type=float,
        default=40,
        help="scenarios 4 and 5: how long the other accounts' bookings keep coming",
    )
    parser.add_argument(
        "--refused-rate",
        type=float,
        default=5.0,
        help="scenarios 4 and 5: the other accounts' messages a second (as many of "
        "the refused or failing accounts' come between them)",
    )
    parser.add_argument(
        "--only",
        choices=["1", "2", "3", "4", "5", "6"],
        action="append",
        help="run only these scenarios (repeatable)",
    )
    parser.add_argument(
        "--batch-mode",
        choices=MODES,
        action="append",
        help="how the sandbox serves a batch's calls: one after another or "
        "side by side (repeatable; default: both)",
    )
    parser.add_argument(
        "--scale-factor",
        type=float,
        default=1.0,
        help="scenario 6: the history's size as a share of the issue's (0.01: a quick try)",
    )
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample scenario 1's consumer with py-spy (every thread, only samples "
        "holding the GIL) into bench-results/s1s-0.pyspy.txt (sequential) "
        "and s1p-0.pyspy.txt (parallel)",
    )
    args = parser.parse_args()
    wanted = set(args.only or ["1", "2", "3", "4", "5", "6"])
    modes = [m for m in MODES if m in (args.batch_mode or MODES)]
    STATE.mkdir(exist_ok=True)
    pg = start_postgres(STATE / "postgres")
    broker = start_broker(log_path=STATE / "tansu.log")
    port = free_port()
    ca_file = STATE / "sandbox-ca.pem"
    ca_file.unlink(missing_ok=True)  # the sandbox writes a fresh one once it listens
    sandbox_process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "calsync_dev.cli",
            "sandbox",
            "--port",
            str(port),
            "--ca-file",
            str(ca_file),
        ],
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    rows: list[Row] = []
    scale_targets: list[str] = []
    try:
        wait_for_port(port, 30)
        deadline = time.monotonic() + 30
        while not ca_file.exists() or not ca_file.stat().st_size:
            if time.monotonic() > deadline:
                raise SystemExit("the sandbox wrote no CA file")
            time.sleep(0.05)
        sandbox = SandboxClient(f"https://127.0.0.1:{port}/", ca_file)
        sandbox.configure(clients={CLIENT_ID: CLIENT_SECRET})
        base = Settings(
            kafka_bootstrap=broker.bootstrap,
            google_api_url=sandbox.api_url,
            google_token_url=sandbox.token_url,
            google_client_id=CLIENT_ID,
            google_client_secret=CLIENT_SECRET,
            google_ca_bundle=str(ca_file),
            token_key=TokenCipher.generate_key(),
        )
        bench = Bench(pg, sandbox, base, args.timeout)
        started, load_before = time.monotonic(), os.getloadavg()
        if "1" in wanted:
            print("== Scenario 1: naive baseline, 50 ms per call", flush=True)
            rows.append(scenario_1_naive(bench, args.naive_messages))
        for mode in modes:
            if "1" in wanted:
                print(f"== Scenario 1 [{mode}]: unthrottled sandbox, 50 ms per call", flush=True)
                rows.append(scenario_1(bench, mode, args.bookings, args.versions, args.profile))
                rows.append(scenario_1_backlog(bench, mode, args.backlog, 30))
            if "2" in wanted:
                print(
                    f"== Scenario 2 [{mode}]: quota 3,000/min per project, 600/min per "
                    "account, 300 ms a call",
                    flush=True,
                )
                rows.append(scenario_2(bench, mode, 1, args.quota_messages))
                rows.append(scenario_2(bench, mode, 3, args.quota_messages))
            if "3" in wanted:
                print(f"== Scenario 3 [{mode}]: steady inflow at 70% of the quota", flush=True)
                rows.append(scenario_3(bench, mode, args.steady_seconds))
            if "4" in wanted:
                print(
                    f"== Scenario 4 [{mode}]: two accounts refused for 10 minutes, a backlog "
                    "of theirs ahead",
                    flush=True,
                )
                rows.append(scenario_4(bench, mode, args.refused_seconds, args.refused_rate))
            if "5" in wanted:
                print(
                    f"== Scenario 5 [{mode}]: one account answered 503 for 10 minutes, a "
                    "backlog of its messages ahead",
                    flush=True,
                )
                rows.append(scenario_5(bench, mode, args.refused_seconds, args.refused_rate))
        if "6" in wanted:
            print(f"== Scenario 6 [{', '.join(modes)}]: scale, ten years of history", flush=True)
            scale_rows, scale_targets = scenario_6(bench, modes, args.scale_factor)
            rows += scale_rows
        elapsed = time.monotonic() - started
    finally:
        sandbox_process.terminate()
        sandbox_process.wait(30)
        broker.stop()
    load = os.getloadavg()
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; "
        f"scenarios took {elapsed / 60:.1f} min; load average (1, 5, 15 min) before "
        f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    table = render(rows, machine, scale_targets)
    print("\n" + table)
    (STATE / "latest.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "rows": [asdict(r) for r in rows],
                "targets": [*targets(rows), *scale_targets],
            },
            indent=2,
        )
    )
    (STATE / "latest.md").write_text(table + "\n")
    print(f"\nwritten: {STATE / 'latest.json'}, {STATE / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
