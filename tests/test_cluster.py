"""The fault scenarios of scripts/cluster, smaller: three hosts as network namespaces, each with its own hostname
and worker-tender, a private PostgreSQL and two beanstalkd servers on a bridge, and real faults (a link cut, a
server killed or partitioned, a tender or a whole host killed -9, PostgreSQL restarted). Every task queued from the
hosts ends done, none completes twice (counted from the file the command writes and from the table), and after
each cluster nothing of it is left: no namespace, no link, no process.

Needs root (CI runs as root): skipped where it cannot run, failed in CI instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import skip_here_fail_in_ci, wait_for

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
HOSTS = 3
SERVERS = 2
TASKS = 30


def _load(name: str) -> ModuleType:
    """A module of scripts/ (not a package): loaded from its path, with what it imports beside it."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


clusterlib = _load("clusterlib")
faults = _load("cluster_faults")


@pytest.fixture(autouse=True)
def _can_build_clusters() -> None:
    missing = [tool for tool in ("ip", "setpriv", "unshare", "beanstalkd") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root")
    if missing:
        skip_here_fail_in_ci(f"a cluster of network namespaces needs {', '.join(missing)}")


def scenario(name: str, tasks: int = TASKS) -> Any:
    """Run one scenario on a fresh cluster; assert the promise and that the cluster left nothing behind."""
    outcome = faults.run_scenario(name, faults.Plan(hosts=HOSTS, servers=SERVERS, tasks=tasks))
    print(outcome.line())
    where = f"{outcome.line()}\nlogs: {outcome.directory}"
    assert clusterlib.leftovers(outcome.figures["slot"]) == [], "the cluster's namespaces and links are removed"
    assert outcome.queued == tasks, where
    assert outcome.done == outcome.queued, where
    assert (outcome.lost_file, outcome.lost_table) == (0, 0), where
    assert outcome.problems == [], where
    return outcome


def assert_once(outcome: Any) -> None:
    where = f"{outcome.line()}\nlogs: {outcome.directory}"
    assert (outcome.twice_file, outcome.twice_table) == (0, 0), where
    assert outcome.ok, where
    assert outcome.directory is None, "a scenario that passed removes its directory"


def test_link_cut_longer_than_the_lease() -> None:
    """The cut host stops its commands when it cannot renew their leases; others take its tasks over once the
    leases are stale; its late results are refused."""
    outcome = scenario("link-cut", tasks=12)
    assert outcome.figures["stopped"] == outcome.figures["held"] >= 1, outcome.line()
    assert outcome.figures["taken_over"] >= 1, outcome.line()
    assert outcome.figures["fenced"] >= 1, "the cut host's late result was refused"
    assert_once(outcome)


def test_beanstalkd_killed() -> None:
    """One of two servers killed -9 while it holds jobs: the reconcilers send its tasks to the other; back with its
    binlog, its old jobs are deleted unrun (the scenario waits for it to hold none) and no task runs twice."""
    outcome = scenario("beanstalkd-killed")
    assert_once(outcome)
    assert outcome.figures["resent"] >= 1, outcome.line()
    assert outcome.figures["back"] >= 1, outcome.line()


def test_beanstalkd_partitioned_from_half_of_the_hosts() -> None:
    assert_once(scenario("beanstalkd-partitioned"))


def test_tender_killed() -> None:
    outcome = scenario("tender-killed")
    assert_once(outcome)
    assert outcome.figures["held"] >= 1, outcome.line()


def test_host_killed() -> None:
    outcome = scenario("host-killed")
    assert_once(outcome)
    # The killed host's running tasks were taken over by the others once their leases went stale.
    assert outcome.figures["taken_over"] == outcome.figures["held"] >= 1, outcome.line()


def test_postgres_restarted_while_every_host_works() -> None:
    assert_once(scenario("postgres-restart"))


# --- the harness itself -------------------------------------------------------------------------------------------


def test_a_cluster_removes_everything_when_its_body_raises() -> None:
    cluster = clusterlib.Cluster(hosts=1)
    with pytest.raises(RuntimeError, match="the body failed"), cluster:
        cluster.start_tenders()
        pids = [int(pid) for pid in clusterlib.ip("netns", "pids", cluster.hosts[0].name).stdout.split()]
        assert pids, "the host runs its tender"
        raise RuntimeError("the body failed")
    assert clusterlib.leftovers(cluster.slot) == []
    assert not cluster.directory.exists()
    wait_for(lambda: all(process_gone_or_zombie(pid) for pid in pids), 10, "the host's processes to go")


def process_gone_or_zombie(pid: int) -> bool:
    """True when the process is gone or a zombie its parent has not reaped yet (it runs nothing)."""
    try:
        return bool(clusterlib.psutil.Process(pid).status() == clusterlib.psutil.STATUS_ZOMBIE)
    except clusterlib.psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stopped_or_killed_run_leaves_nothing(how: str, tmp_path: Path) -> None:
    """SIGTERM: the cluster removes what it made as it exits. SIGKILL: its processes die with it (parent-death
    signal), and the next cluster removes its namespaces, links and PostgreSQL."""
    script = tmp_path / "hold.py"
    script.write_text("import sys, time\nsys.path.insert(0, sys.argv[1])\nimport clusterlib\n"
                      "with clusterlib.Cluster(hosts=1, servers=1) as cluster:\n"
                      # the holder idles until the test stops or kills it: the pause is the thing under test
                      "    print(cluster.slot, cluster.directory, flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, str(script), str(SCRIPTS)], stdout=subprocess.PIPE, text=True)
    directory = ""
    try:
        assert holder.stdout is not None
        slot_text, directory = holder.stdout.readline().split()
        slot = int(slot_text)
        assert clusterlib.leftovers(slot), "the cluster is up"
        holder.send_signal(getattr(signal, how))
        holder.wait(60)
        if how == "SIGKILL":
            clusterlib.remove_leftovers()    # what the next cluster does first
        wait_for(lambda: clusterlib.leftovers(slot) == [], 30, "the slot's namespaces and links to go")
        listen = f"listen_addresses={clusterlib.NET}.{slot}.1"
        wait_for(lambda: not any(listen in " ".join(p.info["cmdline"] or [])
                                 for p in clusterlib.psutil.process_iter(["cmdline"])), 30, "PostgreSQL to go")
        assert how == "SIGKILL" or not Path(directory).exists(), "SIGTERM: the cluster removed its directory"
    finally:
        holder.kill()
        holder.wait(10)
        if directory:
            shutil.rmtree(directory, ignore_errors=True)   # a cluster killed -9 leaves its directory (logs) behind
