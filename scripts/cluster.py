"""K hosts on one machine, as Linux network namespaces on a bridge, each with its own hostname and worker-tender,
beside a private PostgreSQL and beanstalkd servers (see clusterlib.py); nothing leaves the machine, and
everything is removed at the end.

    run       queue tasks from every host and print tasks/s
    faults    the fault scenarios (cluster_faults.py), a line each:
              <scenario>: queued N, done N, lost 0, completed twice 0 (notes)
    capacity  for each K, tasks/s and the database's transactions and statements per task (cluster_capacity.py)

Exit code 0 when every scenario kept every task (faults) or the run ended (run, capacity); 1 otherwise; 2 for
bad arguments (one line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from cluster_capacity import capacity, table
from cluster_faults import SCENARIOS, Plan, figures_of, run_scenario
from clusterlib import ClusterError, Stopped


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit code 2, no usage dump
        self.exit(2, f"cluster: {message}\n")


def _count(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value
    return parse


def _host_counts(text: str) -> list[int]:
    counts = [_count(1, 9)(part.strip()) for part in text.split(",") if part.strip()]
    if not counts:
        raise argparse.ArgumentTypeError(f"{text!r} names no host count")
    return counts


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(prog="scripts/cluster", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="queue tasks from every host, print tasks/s")
    faults = commands.add_parser("faults", help="the fault scenarios")
    measure = commands.add_parser("capacity", help="tasks/s and database work per task for K = 1, 2, ... hosts")
    for sub, tasks in ((run, 1000), (faults, 200), (measure, 1000)):
        sub.add_argument("--tasks", type=_count(1, 10**6), default=tasks, metavar="N",
                         help=f"tasks per run or scenario [default {tasks}]")
        sub.add_argument("--servers", type=_count(1, 3), default=2, metavar="S", help="beanstalkd servers [default 2]")
        sub.add_argument("--workers", type=_count(1, 32), default=2, metavar="W", help="workers per host [default 2]")
    run.add_argument("--hosts", type=_count(1, 9), default=3, metavar="K", help="hosts [default 3]")
    faults.add_argument("--hosts", type=_count(2, 9), default=3, metavar="K", help="hosts [default 3]")
    faults.add_argument("--only", metavar="NAME[,NAME]", help=f"scenarios to run: {', '.join(SCENARIOS)}")
    faults.add_argument("--keep", action="store_true", help="keep every scenario's directory (a failed one's is "
                        "always kept)")
    faults.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    measure.add_argument("--hosts", type=_host_counts, default=[1, 2, 3, 4], metavar="K[,K]",
                         help="host counts to measure [default 1,2,3,4]")
    measure.add_argument("--runs", type=_count(1, 100), default=3, metavar="R", help="runs per K [default 3]")
    args = parser.parse_args(argv)
    if args.command == "faults":
        names = list(SCENARIOS) if args.only is None else [name.strip() for name in args.only.split(",")
                                                              if name.strip()]
        unknown = [name for name in names if name not in SCENARIOS]
        if unknown or not names:
            parser.error(f"--only: unknown scenario {(unknown or [args.only])[0]!r} (known: {', '.join(SCENARIOS)})")
        args.names = names
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "faults":
            return faults(args)
        if args.command == "run":
            results = capacity([args.hosts], args.tasks, 1, args.workers, args.servers, lambda _line: None)
            print(f"run: {args.hosts} host(s), {args.hosts * args.workers} workers, {args.tasks} tasks: "
                  f"{results[0][0].rate:.0f} tasks/s")
            return 0
        results = capacity(args.hosts, args.tasks, args.runs, args.workers, args.servers,
                           lambda line: print(line, file=sys.stderr, flush=True))
        print(f"capacity: {args.tasks} noop tasks a run, medians of {args.runs} run(s)")
        print(table(results, args.workers))
        return 0
    except KeyboardInterrupt:
        print("cluster: interrupted; everything it made is removed", file=sys.stderr)
        return 130
    except Stopped as stopped:
        print(f"cluster: {stopped}; everything it made is removed", file=sys.stderr)
        return 143
    except ClusterError as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1


def faults(args: argparse.Namespace) -> int:
    plan = Plan(hosts=args.hosts, servers=args.servers, tasks=args.tasks, workers=args.workers, keep=args.keep)
    outcomes = []
    for name in args.names:
        print(f"cluster: {name} ...", file=sys.stderr, flush=True)
        outcome = run_scenario(name, plan)
        outcomes.append(outcome)
        if not args.json:
            print(outcome.line(), flush=True)
        if outcome.directory is not None:
            print(f"cluster: {name}: logs kept in {outcome.directory}", file=sys.stderr)
    ok = all(outcome.ok for outcome in outcomes)
    if args.json:
        print(json.dumps({"hosts": plan.hosts, "servers": plan.servers, "tasks": plan.tasks, "ok": ok,
                          "scenarios": [figures_of(outcome) for outcome in outcomes]}, indent=2))
    else:
        print(f"cluster: {sum(outcome.ok for outcome in outcomes)} of {len(outcomes)} scenario(s) clean, "
              f"median {statistics.median(outcome.seconds for outcome in outcomes):.0f}s each", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
