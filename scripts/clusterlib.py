"""K hosts on one machine: Linux network namespaces joined by a bridge, each running a `pheanq worker-tender`
under its own hostname, beside a private PostgreSQL cluster and beanstalkd servers that listen on the bridge;
and the faults a real cluster meets (a link cut, a server killed or partitioned, a host's processes killed).

Nothing leaves the machine: every address is in 10.200.0.0/16 and exists only on the cluster's bridge and
inside its namespaces. A cluster takes a free slot N (the /24 10.200.N.0/24 and the name prefix ``pqcN-``)
under a lock file that the kernel releases when its process dies, so clusters built at once by several
processes never meet, and whatever an earlier run left in a slot whose lock nobody holds (namespaces, links,
their processes) is removed at the start. On exit, also after an exception, SIGTERM or SIGINT, the cluster
removes everything it made: its processes, namespaces, links and temp directory.

Slot N::

    10.200.N.1      the bridge pqcN-br, in the root namespace: the PostgreSQL cluster, and this process
    10.200.N.1I     host I (1, 2, ...): namespace pqcN-hI, hostname hI, its tender, its directory hI/
    10.200.N.10I    beanstalkd server I: namespace pqcN-bI, port 11300, its binlog in bI/
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import psutil
import psycopg
from chaos import COMMAND, TASK_SCRIPT, PostgresCluster, wait_until

NET = "10.200"
PREFIX = "pqc"
OURS = re.compile(rf"^{PREFIX}(\d+)-")
LOCKS = Path(tempfile.gettempdir()) / "pheanq-cluster-locks"
BEANSTALKD_PORT = 11300
TUBE = "cluster"
DATABASE = "pheanq"
PRODUCER = "producer"           # the database role of the producers (the tenders and workers are postgres)
NOOP = "noop"                   # the trivial command of the capacity runs: only the queue's own cost remains
NOOP_SCRIPT = 'echo "$PHEANQ_TASK_ID" >> "$1"'
TTR = 4                         # short leases: see pheanq.lease (stale after 6 s, the holder stops at 3.7 s)
RECONCILE_INTERVAL = 2.0
RECONCILE_MIN_AGE = 3.0


class ClusterError(Exception):
    """The cluster cannot be built or a fault cannot be made; the message says what."""


class Stopped(BaseException):
    """SIGTERM arrived while a cluster was up: unwind, so that the cluster removes what it made."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; ClusterError with its complaint if it fails and `check`."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    if check and result.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


# --- slots: which /24 and name prefix are free, and what a dead run left ----------------------------------------


def _try_lock(slot: int) -> int | None:
    """The slot's lock, held (a descriptor) or None when a live process holds it."""
    LOCKS.mkdir(mode=0o700, exist_ok=True)
    descriptor = os.open(LOCKS / f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def claim_slot() -> tuple[int, int]:
    """A free slot and its held lock; leftovers of dead runs are removed first. Each process starts looking at a
    slot of its own (from its pid), so that a slot just given up is not at once taken by another process."""
    remove_leftovers()
    first = os.getpid() % 254
    for slot in (1 + (first + i) % 254 for i in range(254)):
        descriptor = _try_lock(slot)
        if descriptor is not None:
            remove_slot(slot)
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
            return slot, descriptor
    raise ClusterError("no free slot in 10.200.0.0/16: 254 clusters are up")


def names_of(slot: int | None = None) -> tuple[list[str], list[str]]:
    """The namespaces and root-namespace links of every slot (or of one): names starting pqcN-."""
    spaces = [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]
    links = [line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link", "show").stdout.splitlines()]

    def wanted(name: str) -> bool:
        found = OURS.match(name)
        return found is not None and (slot is None or int(found.group(1)) == slot)

    return [name for name in spaces if wanted(name)], [name for name in links if wanted(name)]


def remove_leftovers() -> None:
    """Remove what runs that died left behind: every slot with names of ours whose lock nobody holds."""
    spaces, links = names_of()
    for slot in sorted({int(OURS.match(name).group(1)) for name in spaces + links}):  # type: ignore[union-attr]
        descriptor = _try_lock(slot)
        if descriptor is not None:
            try:
                remove_slot(slot)
            finally:
                os.close(descriptor)


def remove_slot(slot: int) -> None:
    """Kill every process in the slot's namespaces, then delete its links (a veth goes with its peer) and
    namespaces. Deleting a link first matters: a namespace whose sockets linger is freed late, with its veth."""
    spaces, links = names_of(slot)
    for space in spaces:
        kill_namespace(space)
    kill_postgres(slot)
    for link in sorted(links, key=lambda name: name.endswith("-br")):   # the bridge last
        ip("link", "del", link, check=False)
    for space in spaces:
        ip("netns", "del", space, check=False)


def kill_postgres(slot: int) -> None:
    """SIGKILL a PostgreSQL server left listening on the slot's bridge address (pg_ctl starts it as a daemon, so
    it outlives a harness killed -9), and remove its directory."""
    listen = f"listen_addresses={NET}.{slot}.1"
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if listen in cmdline and "-D" in cmdline:
            with contextlib.suppress(psutil.Error):
                process.kill()
                process.wait(10)
            data = Path(cmdline[cmdline.index("-D") + 1])
            if data.parent.name.startswith("pheanq-chaos-pg-"):
                shutil.rmtree(data.parent, ignore_errors=True)


def kill_namespace(space: str) -> list[int]:
    """SIGKILL every process in a namespace; their pids."""
    pids = [int(pid) for pid in ip("netns", "pids", space, check=False).stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


# --- nodes and processes ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Node:
    """A namespace with one veth into the bridge: a host or a beanstalkd server."""

    name: str           # the namespace, and its link's name in the root namespace (the bridge's port)
    hostname: str
    address: str
    directory: Path

    def run_in(self, argv: Sequence[str]) -> list[str]:
        """argv run in this namespace, under this node's own hostname."""
        return ["ip", "netns", "exec", self.name, "unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"',
                self.hostname, *argv]


class Process:
    """A long-running process started in a node; stdout and stderr go to a log file. setpriv's parent-death signal
    takes it down with this process whatever happens (`ip netns exec`, unshare and sh all exec in place)."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", *argv], stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def add_node(bridge: str, name: str, hostname: str, address: str, directory: Path) -> Node:
    ip("netns", "add", name)
    ip("link", "add", name, "type", "veth", "peer", "name", name + "p")
    ip("link", "set", name + "p", "netns", name)
    ip("-n", name, "link", "set", name + "p", "name", "eth0")
    ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
    ip("-n", name, "link", "set", "eth0", "up")
    ip("-n", name, "link", "set", "lo", "up")
    ip("link", "set", name, "master", bridge)
    ip("link", "set", name, "up")
    directory.mkdir(parents=True, exist_ok=True)
    return Node(name, hostname, address, directory)


# --- the cluster -------------------------------------------------------------------------------------------------


class Cluster:
    """K hosts, `servers` beanstalkd servers and one PostgreSQL, built on entry and removed on exit."""

    def __init__(self, hosts: int = 3, servers: int = 1, workers: int = 2, tender_args: Sequence[str] = (),
                 keep: bool = False, reconcile_interval: float | None = RECONCILE_INTERVAL) -> None:
        if not 1 <= hosts <= 9 or not 1 <= servers <= 9:
            raise ClusterError("a cluster has 1 to 9 hosts and 1 to 9 beanstalkd servers")
        self.size, self.server_count, self.workers = hosts, servers, workers
        self.tender_args = list(tender_args)
        if reconcile_interval is not None:     # None: the tender's own defaults
            self.tender_args += ["--reconcile-interval", str(reconcile_interval), "--min-age", str(RECONCILE_MIN_AGE)]
        self.keep = keep                    # keep the directory (logs, ran.txt) after exit
        self.slot = 0
        self._lock: int | None = None
        self.directory = Path()
        self.bridge = ""
        self.hosts: list[Node] = []
        self.servers: list[Node] = []
        self.tenders: dict[str, Process] = {}           # host name -> its current tender
        self.beanstalkds: dict[int, Process] = {}       # server index -> its process
        self.processes: list[Process] = []              # every process started, for the end
        self.blackholes: list[tuple[Node, str]] = []
        self.postgres: PostgresCluster | None = None
        self.ran_file = Path()
        self._saved_handler: Any = None

    # --- building and removing ---

    def __enter__(self) -> Cluster:
        if threading.current_thread() is threading.main_thread():
            self._saved_handler = signal.signal(signal.SIGTERM, _stop)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _build(self) -> None:
        for tool in ("ip", "setpriv", "unshare"):
            if shutil.which(tool) is None:
                raise ClusterError(f"{tool} is not installed (iproute2, util-linux)")
        if os.geteuid() != 0:
            raise ClusterError("a cluster of network namespaces needs root")
        self.slot, self._lock = claim_slot()
        net = f"{NET}.{self.slot}"
        self.directory = Path(tempfile.mkdtemp(prefix=f"pheanq-cluster-{self.slot}-"))
        self.ran_file = self.directory / "ran.txt"
        self.ran_file.touch()
        self.bridge = f"{PREFIX}{self.slot}-br"
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{net}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i in range(1, self.server_count + 1):
            self.servers.append(add_node(self.bridge, f"{PREFIX}{self.slot}-b{i}", f"b{i}", f"{net}.{100 + i}",
                                         self.directory / f"b{i}"))
            (self.directory / f"b{i}" / "binlog").mkdir()
        for i in range(1, self.size + 1):
            self.hosts.append(add_node(self.bridge, f"{PREFIX}{self.slot}-h{i}", f"h{i}", f"{net}.{10 + i}",
                                       self.directory / f"h{i}"))
        self.postgres = PostgresCluster(listen=f"{net}.1", settings={
            "shared_preload_libraries": "pg_stat_statements", "max_connections": "300"})
        with (self.postgres.data / "pg_hba.conf").open("a") as rules:
            rules.write(f"host all all {net}.0/24 trust\n")     # the bridge's hosts, as initdb -A trust allows lo
        self.postgres.start()
        for i in range(len(self.servers)):
            self.start_beanstalkd(i)
        for host in self.hosts:
            self._write_config(host)
        self.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database="postgres")
        self.sql(f"CREATE DATABASE {DATABASE}", database="postgres")
        self.sql(f"CREATE ROLE {PRODUCER} SUPERUSER LOGIN", database="postgres")
        upgrade = subprocess.run([sys.executable, "-m", "pheanq", "db", "upgrade"], env=self.env(self.hosts[0]),
                                 capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if upgrade.returncode != 0:
            raise ClusterError(f"pheanq db upgrade: {upgrade.stderr.strip()[-300:]}")

    def close(self) -> None:
        """Remove everything this cluster made; safe to call twice, and on a half-built cluster."""
        for process in reversed(self.processes):
            process.kill()
        for node in self.hosts + self.servers:
            kill_namespace(node.name)
        if self.postgres is not None:
            self.postgres.remove(keep_log=self.directory / "postgres.log" if self.keep else None)
            self.postgres = None
        if self._lock is not None:
            remove_slot(self.slot)
            os.close(self._lock)
            self._lock = None
        if not self.keep and self.directory != Path():
            shutil.rmtree(self.directory, ignore_errors=True)
        if self._saved_handler is not None:
            signal.signal(signal.SIGTERM, self._saved_handler)
            self._saved_handler = None

    # --- what the hosts share ---

    @property
    def database_url(self) -> str:
        """pheanq's database; the statistics are read from the database `postgres` beside it, so that reading
        them does not count in pheanq's."""
        return self.url_of(DATABASE)

    def url_of(self, database: str) -> str:
        assert self.postgres is not None
        return f"{self.postgres.url.rsplit('/', 1)[0]}/{database}"

    @property
    def producer_url(self) -> str:
        """pheanq's database as the role the producers use, so that pg_stat_statements tells their statements
        from the workers' and tenders'."""
        return self.database_url.replace("://postgres@", f"://{PRODUCER}@", 1)

    @property
    def beanstalkd_setting(self) -> str:
        return ",".join(f"{server.address}:{BEANSTALKD_PORT}" for server in self.servers)

    def _write_config(self, host: Node) -> None:
        (host.directory / "run").mkdir(exist_ok=True)
        commands = {COMMAND: ["/bin/sh", "-c", TASK_SCRIPT, COMMAND, str(self.ran_file)],
                    NOOP: ["/bin/sh", "-c", NOOP_SCRIPT, NOOP, str(self.ran_file)]}
        lines = [f"database_url = {json.dumps(self.database_url)}",
                 f"beanstalkd = {json.dumps(self.beanstalkd_setting)}",
                 f"default_tube = {json.dumps(TUBE)}",
                 f"run_dir = {json.dumps(str(host.directory / 'run'))}",
                 "[commands]", *(f"{name} = {json.dumps(argv)}" for name, argv in commands.items())]
        (host.directory / "pheanq.toml").write_text("\n".join(lines) + "\n")

    def env(self, host: Node) -> dict[str, str]:
        """The environment of pheanq on `host`: its pheanq.toml and nothing else of PHEANQ_*."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PHEANQ_")}
        env["PHEANQ_CONFIG"] = str(host.directory / "pheanq.toml")
        return env

    def host(self, name: str) -> Node:
        return next(host for host in self.hosts if host.hostname == name)

    def sql(self, statement: str, params: dict[str, Any] | None = None,
            database: str = DATABASE) -> list[tuple[Any, ...]]:
        """One statement from this process (the root namespace), in its own connection."""
        with psycopg.connect(self.url_of(database), autocommit=True, connect_timeout=5) as connection:
            cursor = connection.execute(statement.encode(), params)
            return list(cursor.fetchall()) if cursor.description else []

    # --- processes ---

    def start_beanstalkd(self, index: int) -> None:
        server = self.servers[index]
        argv = ["ip", "netns", "exec", server.name, shutil.which("beanstalkd") or "/usr/bin/beanstalkd",
                "-l", server.address, "-p", str(BEANSTALKD_PORT), "-b", str(server.directory / "binlog")]
        process = Process(argv, server.directory / "beanstalkd.log")
        self.processes.append(process)
        self.beanstalkds[index] = process
        wait_until(lambda: not process.alive() or self._answers(server), 15, f"beanstalkd {server.hostname}", 0.05)
        if not process.alive():
            raise ClusterError(f"beanstalkd {server.hostname} exited: {process.log()[-300:]}")

    def _answers(self, server: Node) -> bool:
        probe = ["ip", "netns", "exec", server.name, sys.executable, "-c",
                 f"import socket; socket.create_connection(({server.address!r}, {BEANSTALKD_PORT}), 1).close()"]
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0

    def start_tender(self, host: Node, *extra: str) -> Process:
        """A `pheanq worker-tender` on `host`: `workers` workers, a short reconcile interval unless told, its log in
        hI/tender.log."""
        argv = host.run_in([sys.executable, "-m", "pheanq", "worker-tender", "--min-workers", str(self.workers),
                            "--spare-workers", "0", "--max-workers", str(self.workers), "--shutdown-timeout", "5",
                            *self.tender_args, *extra])
        process = Process(argv, host.directory / "tender.log", self.env(host))
        self.processes.append(process)
        self.tenders[host.hostname] = process
        return process

    def start_tenders(self, hosts: Sequence[Node] | None = None) -> None:
        """Tenders on these hosts (all by default), once each has a worker waiting for a job."""
        started = [(host, self.start_tender(host)) for host in (self.hosts if hosts is None else hosts)]
        for host, tender in started:
            wait_until(lambda tender=tender: not tender.alive() or "READY" in tender.log(), 60,  # type: ignore[misc]
                       f"the tender of {host.hostname} to start a worker")
            if not tender.alive():
                raise ClusterError(f"the tender of {host.hostname} exited: {tender.log()[-500:]}")

    def stop_tenders(self) -> None:
        """SIGTERM every tender and wait for it to drain."""
        for tender in self.tenders.values():
            tender.popen.terminate()
        for tender in self.tenders.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                tender.popen.wait(30)
            tender.kill()
        self.tenders.clear()

    def run_on(self, host: Node, argv: Sequence[str], log: Path) -> Process:
        """A producer on a host: the host's pheanq environment, connected as the producers' role."""
        process = Process(host.run_in(argv), log, {**self.env(host), "PHEANQ_DATABASE_URL": self.producer_url})
        self.processes.append(process)
        return process

    # --- faults ---

    def cut_link(self, host: Node) -> None:
        """Pull the host's cable: its port on the bridge goes down, so what it sends is silently lost."""
        ip("link", "set", host.name, "down")

    def restore_link(self, host: Node) -> None:
        ip("link", "set", host.name, "up")

    def kill_tender(self, host: Node) -> None:
        """kill -9 of the host's tender process only."""
        self.tenders[host.hostname].kill()

    def kill_host(self, host: Node) -> int:
        """kill -9 of every process of the host at once (as its power going off would); how many there were."""
        killed = kill_namespace(host.name)
        if host.hostname in self.tenders:
            self.tenders[host.hostname].kill()
        return len(killed)

    def kill_beanstalkd(self, index: int) -> None:
        self.beanstalkds[index].kill()

    def partition_beanstalkd(self, index: int, hosts: Sequence[Node]) -> None:
        """Server `index` unreachable from these hosts only (a blackhole route in each), reachable from the rest."""
        address = self.servers[index].address
        for host in hosts:
            ip("-n", host.name, "route", "add", "blackhole", f"{address}/32")
            self.blackholes.append((host, address))

    def heal(self) -> None:
        for host, address in self.blackholes:
            ip("-n", host.name, "route", "del", "blackhole", f"{address}/32", check=False)
        self.blackholes.clear()

    def restart_postgres(self) -> None:
        assert self.postgres is not None
        self.postgres.restart_fast()


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


def leftovers(slot: int) -> list[str]:
    """What of slot `slot` is still there: namespaces and links (empty after a cluster's exit)."""
    spaces, links = names_of(slot)
    return spaces + links
