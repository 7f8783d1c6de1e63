"""The dashboard's pages timed on a table of --rows tasks (default 10 million): issue 14's goal, every page under
300 ms on 10 M rows on PostgreSQL and SQLite (MariaDB too, when asked for).

The table is scripts/bench-listings' fill, kept in the same places (so one fill serves both benches): made by
pheanq's migrations, then filled in a few big statements; 10 M tasks created over 30 days, 97 % of them done,
a batch of 200,000 still running, four tubes. A real `pheanq web` process serves it (no users: loopback) beside a
fresh beanstalkd, and this script asks each page over HTTP, as a browser would: once to warm the server's
connections, then --runs times; the figure is the median of the whole request (connection, query, rendering,
transfer), the slowest run beside it. The JSON of the overview's charts (/api/activity) is timed too: the page
fetches it when it loads.

    ./scripts/bench-web [--database sqlite,postgresql,mysql] [--rows N] [--runs R] [--refill] [--cache-dir DIR]
                        [--postgres-url URL] [--mysql-url URL] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
import sqlalchemy as sa
from bench_listings import (
    Fill,
    drop_tables,
    engine_scalar,
    ensure_database,
    fill_options,
    fill_table,
    kept_fill,
    server_version,
)
from benchlib import BenchError, beanstalkd, free_port, machine, machine_line, spawn, stop, stop_all

from pheanq.storage import Store
from pheanq.storage.migrate import upgrade_database

GOAL_SECONDS = 0.3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-web", description=__doc__.splitlines()[0])
    options, kinds, urls = fill_options(parser, argv, "sqlite,postgresql", runs=5)
    info = machine()
    results: dict[str, dict[str, Any]] = {}
    try:
        with beanstalkd() as (host, port):
            for kind in kinds:
                results[kind] = measure(kind, urls[kind], options.rows, options.runs, options.refill,
                                        f"{host}:{port}")
    except BenchError as error:
        print(f"bench-web: error: {error}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    if options.json:
        print(json.dumps({"rows": options.rows, "runs": options.runs, "machine": info, "databases": results},
                         indent=2))
    else:
        print(format_table(results, info, options.rows, options.runs))
    return 0


def measure(kind: str, url: str, rows: int, runs: int, refill: bool, server: str) -> dict[str, Any]:
    ensure_database(kind, url)
    store = Store(url)
    try:
        engine = store.database.engine
        fill = Fill.of(rows)
        if refill or kept_fill(engine) != rows:
            log(f"{kind}: filling {rows:,} rows")
            started = time.monotonic()
            drop_tables(engine)
            upgrade_database(store)
            fill_table(kind, engine, fill)
            log(f"{kind}: filled in {time.monotonic() - started:.0f} s")
        else:
            upgrade_database(store)
        store.tasks.fold_counts()
        if kind == "postgresql":
            # The fold deleted the fill's 10 M count changes; until autovacuum (every minute) clears them, reading
            # the few live ones scans the dead (400 ms). A table in use is vacuumed: so is this one, at once.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE pheanq_count_change"))
        newest, oldest = (engine_scalar(engine, f"SELECT {aggregate}(id) FROM pheanq_task")
                          for aggregate in ("max", "min"))
        failed = engine_scalar(engine, "SELECT max(id) FROM pheanq_task WHERE status = 'failed'")
        version = server_version(engine)
    finally:
        store.close()
    pages = [
        ("overview", "/"),
        ("overview's charts, last hour", "/api/activity?window=hour"),
        ("overview's charts, last day", "/api/activity?window=day"),
        ("overview's charts, last day, tube mail", "/api/activity?window=day&tube=mail"),
        ("tasks", "/tasks"),
        ("tasks, failed", "/tasks?status=failed"),
        ("tasks, failed in mail", "/tasks?status=failed&tube=mail"),
        ("tasks, new (live)", "/tasks?status=new"),
        ("tasks, done, finished in the last hour", "/tasks?status=done&finished_after=1h"),
        ("tasks, of the running batch", f"/tasks?batch={fill.big_batch}"),
        ("tasks, 10th page (keyset)", f"/tasks?after={newest - 450}"),
        ("task (newest)", f"/tasks/{newest}"),
        ("task (oldest)", f"/tasks/{oldest}"),
        ("task (a failed one)", f"/tasks/{failed}"),
        ("batches", "/batches"),
        ("batch (1000, finished)", f"/batches/{fill.small_batch}"),
        ("batch (200k, running)", f"/batches/{fill.big_batch}"),
        ("workers", "/workers"),
        ("tubes", "/tubes"),
        ("buried jobs", "/buried"),
        ("audit", "/audit"),
    ]
    port = free_port()
    environment = dict(os.environ, PHEANQ_DATABASE_URL=url, PHEANQ_BEANSTALKD=server)
    environment.pop("PHEANQ_WEB_USERS", None)
    web = spawn([sys.executable, "-m", "pheanq", "web", "--bind", f"127.0.0.1:{port}"], env=environment,
                stdout=subprocess.DEVNULL)
    try:
        _wait_for_port(port, web)
        timings: dict[str, dict[str, float]] = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            for name, path in pages:
                _get(client, path)
                seconds = [_get(client, path) for _ in range(runs)]
                timings[name] = {"median_seconds": statistics.median(seconds), "max_seconds": max(seconds)}
                log(f"{kind}: {name}: {statistics.median(seconds) * 1000:.0f} ms (slowest {max(seconds) * 1000:.0f})")
        return {"version": version, "pages": timings, "paths": dict(pages)}
    finally:
        stop(web)


def _get(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    answer = client.get(path)
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise BenchError(f"GET {path} answered {answer.status_code}: {answer.text[:300]}")
    return elapsed


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"pheanq web exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise BenchError("pheanq web did not start within 30 s")


def log(message: str) -> None:
    print(f"bench-web: {message}", file=sys.stderr, flush=True)


def format_table(results: dict[str, dict[str, Any]], info: dict[str, Any], rows: int, runs: int) -> str:
    kinds = list(results)
    names = list(next(iter(results.values()))["pages"]) if results else []
    lines = [f"pheanq web on {rows:,} tasks: each page's whole request over HTTP, median of {runs} (slowest), ms; "
             f"goal < {GOAL_SECONDS * 1000:.0f} ms", machine_line(info),
             "  ".join(f"{kind} {results[kind]['version']}" for kind in kinds), ""]
    width = max([len(name) for name in names] + [4])
    lines.append("page".ljust(width) + "".join(f"  {kind:>18}" for kind in kinds))
    for name in names:
        cells = []
        for kind in kinds:
            figure = results[kind]["pages"][name]
            mark = "" if figure["median_seconds"] < GOAL_SECONDS else " !"
            cells.append(f"{figure['median_seconds'] * 1000:>7.0f} ({figure['max_seconds'] * 1000:>5.0f}){mark:>2}")
        lines.append(name.ljust(width) + "".join(f"  {cell:>18}" for cell in cells))
    over = [(kind, name) for kind in kinds for name in names
            if results[kind]["pages"][name]["median_seconds"] >= GOAL_SECONDS]
    lines += ["", "every page under the goal" if not over else
              "over the goal (!): " + ", ".join(f"{name} on {kind}" for kind, name in over)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
