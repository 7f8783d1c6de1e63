"""Every beanstalkd server of an installation, as one: the `beanstalkd` setting may list several.

A job id pheanq records on a task is a *job reference*: the number of the job's server (pheanq.storage.servers)
in the bits above JOB_ID_BITS, and that server's own id of the job below them. With one server the number is 0,
so a reference is beanstalkd's own id, as it always was.

- A put goes to the servers in turn (round-robin, in each process). A server that fails is left alone for a
  while (1 s, doubling up to 30 s) and the put goes to the next one at once; only when every server failed
  does the put fail.
- A reserve asks each server in turn without waiting (`reserve-with-timeout 0`), starting one server further
  on at each call, so that no server is starved. When none has a job, it waits on all of them at once and takes
  the first job that comes; it gives the other waits up by closing their connections (beanstalkd puts a job it
  reserved for a connection that closed back into its tube, with its priority). So a priority is honoured among
  the jobs of one server; across servers, a job that is less urgent may be taken first when it is its server's
  turn.
- What acts on one job (touch, delete, release, bury, kick, stats) goes to the job's server, through the
  connection that reserved it. What acts on a tube (kick, pause, its figures) acts on every server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import select
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from pheanq.beanstalkd.connection import (
    BeanstalkdConnection,
    JobInfo,
    JobToPut,
    PutRefused,
    ReservedJob,
    ServerIdentity,
)
from pheanq.errors import StoreUnavailable, TubeUnavailable

T = TypeVar("T")

# A server's own job ids below this many bits, its number above them: beanstalkd counts a server's jobs from 1, and
# 2**44 is 17.6 trillion jobs, 55 years at 10,000 a second.
JOB_ID_BITS = 44
_JOB_ID_MASK = (1 << JOB_ID_BITS) - 1
FIRST_DOWN_SECONDS = 1.0
MAX_DOWN_SECONDS = 30.0
# A server that failed is tried again with this connect timeout: one cut off by the network (no refusal comes)
# would otherwise hold a worker for the whole connect timeout at every try.
RETRY_CONNECT_TIMEOUT = 1.0
# How long past a wait's own timeout an answer may take before the wait is given up.
WAIT_MARGIN_SECONDS = 1.0
# Figures of stats-tube that add up across servers; the pause figures take the longest; the others are the first's.
_SUMMED_PREFIXES = ("current-", "total-", "cmd-")


def job_reference(number: int, job_id: int) -> int:
    """The job id pheanq records for job `job_id` of server `number`."""
    return (number << JOB_ID_BITS) | job_id


def server_number(reference: int) -> int:
    return reference >> JOB_ID_BITS


@dataclasses.dataclass(frozen=True)
class ServerState:
    """One server as this process sees it: for `pheanq status`, the dashboard and the metrics."""

    address: str
    number: int | None          # None: not numbered yet (the database did not answer)
    up: bool
    reason: str                 # why it counts as down; "" when up
    listed: bool = True         # False: numbered once, but not in this process's list


@dataclasses.dataclass
class _Server:
    connection: BeanstalkdConnection
    number: int = 0
    down_until: float = 0.0
    down_for: float = 0.0
    reason: str = ""

    @property
    def address(self) -> str:
        return self.connection.server

    def resting(self, now: float) -> bool:
        """Left alone after a failure, for now."""
        return now < self.down_until

    def failed(self, reason: str) -> None:
        self.down_for = min(MAX_DOWN_SECONDS, self.down_for * 2) if self.down_for else FIRST_DOWN_SECONDS
        self.down_until = time.monotonic() + self.down_for
        self.reason = reason

    def answered(self) -> None:
        self.down_for = 0.0
        self.down_until = 0.0
        self.reason = ""


class BeanstalkdServers:
    """The beanstalkd servers of one process, with a connection to each (see the module's docstring)."""

    def __init__(self, connections: Sequence[BeanstalkdConnection],
                 numbering: Callable[[Sequence[str]], dict[str, int]] | None = None) -> None:
        if not connections:
            raise ValueError("at least one beanstalkd server is needed")
        self._servers = [_Server(connection) for connection in connections]
        self._numbering = numbering
        self._numbered = len(connections) == 1  # one server is number 0, whatever the registry says
        self._names: dict[int, str] = {0: self._servers[0].address} if self._numbered else {}
        self._connect_timeout = {id(server): server.connection.connect_timeout for server in self._servers}
        self._next_put = itertools.count()
        self._next_reserve = itertools.count()

    @classmethod
    def at(cls, addresses: Sequence[tuple[str, int]],
           numbering: Callable[[Sequence[str]], dict[str, int]] | None = None) -> BeanstalkdServers:
        return cls([BeanstalkdConnection(address) for address in addresses], numbering)

    @property
    def server(self) -> str:
        """The servers as the setting names them: `host:port`, several joined by commas."""
        return ",".join(server.address for server in self._servers)

    @property
    def several(self) -> bool:
        return len(self._servers) > 1

    def close(self) -> None:
        for server in self._servers:
            server.connection.close()

    # --- puts: to the servers in turn ----------------------------------------------------------------------

    def put(self, tube: str, body: bytes, priority: int, delay: int, ttr: int) -> int:
        server, job_id = self._to_next_server(lambda connection: connection.put(tube, body, priority, delay, ttr))
        return self._reference(server, job_id)

    def put_many(self, tube: str, jobs: Sequence[JobToPut]) -> list[int | PutRefused]:
        """BeanstalkdConnection.put_many on the next server that answers. When a connection broke half-way, the
        jobs go to the next server whole: some may then be on both, and the claim runs a task once whichever of
        its jobs comes first (the other is deleted unrun)."""
        server, answers = self._to_next_server(lambda connection: connection.put_many(tube, jobs))
        return [answer if isinstance(answer, PutRefused) else self._reference(server, answer) for answer in answers]

    # --- reserves: from every server ------------------------------------------------------------------------

    def reserve(self, tubes: Iterable[str], timeout: int) -> ReservedJob | None:
        """The next job of `tubes` from any server, waiting up to `timeout` seconds; None when none came."""
        wanted = list(tubes)
        servers = self._servers_numbered()
        if len(servers) == 1:
            job = self._using(servers[0], lambda connection: connection.reserve(wanted, timeout))
            return None if job is None else ReservedJob(self._reference(servers[0], job.id), job.body)
        reachable: list[_Server] = []
        errors: list[str] = []
        for server in self._in_turn(servers, self._next_reserve, skip_resting=True):
            try:
                job = self._using(server, lambda connection: connection.reserve(wanted, 0))
            except TubeUnavailable as error:
                errors.append(str(error))
                continue
            if job is not None:
                return ReservedJob(self._reference(server, job.id), job.body)
            reachable.append(server)
        if not reachable:
            raise TubeUnavailable("; ".join(errors) or self._every_server_down())
        return self._wait_on(reachable, wanted, timeout) if timeout > 0 else None

    # --- one job: on its server -----------------------------------------------------------------------------

    def touch(self, reference: int) -> bool:
        return self._on_job(reference, lambda connection, job_id: connection.touch(job_id))

    def delete(self, reference: int) -> bool:
        return self._on_job(reference, lambda connection, job_id: connection.delete(job_id))

    def delete_many(self, references: Sequence[int]) -> list[bool]:
        """Delete the jobs, each server's in one round trip; whether each was deleted, in order."""
        deleted: dict[int, bool] = {}
        by_server: dict[int, list[int]] = {}
        for reference in references:
            by_server.setdefault(server_number(reference), []).append(reference)
        for number, group in by_server.items():
            server = self._server_numbered(number, group[0])
            deleted.update(zip(group, self._delete_on(server, [reference & _JOB_ID_MASK for reference in group]),
                               strict=True))
        return [deleted[reference] for reference in references]

    def release(self, reference: int, priority: int, delay: int = 0) -> bool:
        return self._on_job(reference, lambda connection, job_id: connection.release(job_id, priority, delay))

    def bury(self, reference: int, priority: int = 0) -> bool:
        return self._on_job(reference, lambda connection, job_id: connection.bury(job_id, priority))

    def kick_job(self, reference: int) -> bool:
        return self._on_job(reference, lambda connection, job_id: connection.kick_job(job_id))

    def kick_delayed(self, reference: int) -> bool:
        return self._on_job(reference, lambda connection, job_id: connection.kick_delayed(job_id))

    def releases(self, reference: int) -> int:
        return self._on_job(reference, lambda connection, job_id: connection.releases(job_id))

    def inspect(self, reference: int) -> JobInfo | None:
        """The job in any state, or None when its server has no such job. TubeUnavailable when its server does
        not answer, or is not in this process's list."""
        server = self._server_numbered(server_number(reference), reference)
        if self.several and server.resting(time.monotonic()):
            # It failed a moment ago: a reconciler asking about each of its jobs would wait on each.
            raise TubeUnavailable(f"beanstalkd at {server.address} is down: {server.reason}")
        info = self._on_job(reference, lambda connection, job_id: connection.inspect(job_id))
        return None if info is None else dataclasses.replace(info, id=reference)

    # --- a tube: on every server ----------------------------------------------------------------------------

    def kick(self, tube: str, bound: int) -> int:
        kicked = 0
        for _server, count in self._on_every_server(lambda connection: connection.kick(tube, bound)):
            kicked += count
        return kicked

    def peek_buried(self, tube: str) -> JobInfo | None:
        """The next buried job of the tube on the first server that has one."""
        for server, info in self._on_every_server(lambda connection: connection.peek_buried(tube)):
            if info is not None:
                return dataclasses.replace(info, id=self._reference(server, info.id))
        return None

    def pause(self, tube: str, seconds: int) -> None:
        for _ in self._on_every_server(lambda connection: connection.pause(tube, seconds)):
            pass

    def tube_stats(self, tube: str) -> dict[str, Any] | None:
        """stats-tube of the servers added up (the pause figures: the longest); None when no server has the
        tube. TubeUnavailable when a server does not answer (`tube_stats_by_server` shows which)."""
        found = [stats for _, stats in self._on_every_server(lambda connection: connection.tube_stats(tube))
                 if stats is not None]
        return added_up(found) if found else None

    def tube_stats_by_server(self, tube: str, skip: Iterable[str] = ()
                             ) -> dict[str, dict[str, Any] | TubeUnavailable | None]:
        """Each server's stats-tube (None: it has no such tube), or the error of one that did not answer; the
        servers named in `skip` are left out."""
        return self._by_server(lambda connection: connection.tube_stats(tube), skip)

    def tubes(self) -> list[str]:
        names: set[str] = set()
        for _, found in self._on_every_server(lambda connection: connection.tubes()):
            names.update(found)
        return sorted(names)

    def identities(self) -> dict[str, ServerIdentity | TubeUnavailable]:
        """Which run of each server answers (see ServerIdentity), or the error of one that did not."""
        return self._by_server(lambda connection: connection.identity())

    def states(self) -> list[ServerState]:
        """Every server: those of this process's list, asked now, then those numbered once but no longer listed."""
        with contextlib.suppress(TubeUnavailable):  # shown without numbers
            self._servers_numbered()
        states = []
        for server, answer in zip(self._servers, self.identities().values(), strict=True):
            number = server.number if self._numbered else None
            states.append(ServerState(server.address, number, not isinstance(answer, TubeUnavailable),
                                      str(answer) if isinstance(answer, TubeUnavailable) else ""))
        listed = {server.address for server in self._servers}
        states += [ServerState(address, number, False, "not in this process's list of servers", listed=False)
                   for number, address in sorted(self._names.items()) if address not in listed]
        return states

    # --- inside ---------------------------------------------------------------------------------------------

    def _wait_on(self, servers: list[_Server], tubes: list[str], timeout: int) -> ReservedJob | None:
        """Wait on every server at once; the first job that comes, or None."""
        waiting: dict[Any, _Server] = {}
        for server in servers:
            try:
                waiting[self._using(server, lambda connection: connection.reserve_started(tubes, timeout))] = server
            except TubeUnavailable:
                continue
        chosen: ReservedJob | None = None
        deadline = time.monotonic() + timeout + WAIT_MARGIN_SECONDS
        try:
            while waiting and chosen is None and (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select(list(waiting), [], [], left)
                for sock in ready:
                    server = waiting.pop(sock)
                    try:
                        job = self._using(server, lambda connection: connection.reserve_answer())
                    except TubeUnavailable:
                        continue
                    if job is None:
                        continue
                    if chosen is None:
                        chosen = ReservedJob(self._reference(server, job.id), job.body)
                    else:
                        server.connection.close()  # a second job at the same moment goes back to its tube
        finally:
            for server in waiting.values():
                server.connection.close()  # the waits not answered are given up
        return chosen

    def _delete_on(self, server: _Server, job_ids: list[int]) -> list[bool]:
        return self._using(server, lambda connection: connection.delete_many(job_ids))

    def _to_next_server(self, put: Callable[[BeanstalkdConnection], T]) -> tuple[_Server, T]:
        """`put` on the servers in turn, those not resting first, until one answers."""
        servers = self._servers_numbered()
        errors = []
        for server in self._in_turn(servers, self._next_put, skip_resting=False):
            try:
                return server, self._using(server, put)
            except TubeUnavailable as error:
                errors.append(str(error))
        raise TubeUnavailable("; ".join(errors))

    def _in_turn(self, servers: list[_Server], counter: Iterator[int], skip_resting: bool) -> list[_Server]:
        """The servers from the next one's turn on, those resting after a failure last (or left out)."""
        start = next(counter) % len(servers)
        order = servers[start:] + servers[:start]
        now = time.monotonic()
        awake = [server for server in order if not server.resting(now)]
        return awake if skip_resting else awake + [server for server in order if server.resting(now)]

    def _on_job(self, reference: int, action: Callable[[BeanstalkdConnection, int], T]) -> T:
        server = self._server_numbered(server_number(reference), reference)
        return self._using(server, lambda connection: action(connection, reference & _JOB_ID_MASK))

    def _by_server(self, action: Callable[[BeanstalkdConnection], T], skip: Iterable[str] = ()
                   ) -> dict[str, T | TubeUnavailable]:
        """`action` on each server not in `skip`: its answer, or its error, by address."""
        answers: dict[str, T | TubeUnavailable] = {}
        for server in self._servers:
            if server.address in skip:
                continue
            try:
                answers[server.address] = self._using(server, action)
            except TubeUnavailable as error:
                answers[server.address] = error
        return answers

    def _on_every_server(self, action: Callable[[BeanstalkdConnection], T]) -> Iterator[tuple[_Server, T]]:
        """`action` on each server; the first error is raised once every server was asked."""
        failure: TubeUnavailable | None = None
        for server in self._servers:
            try:
                answer = self._using(server, action)
            except TubeUnavailable as error:
                failure = failure or error
                continue
            yield server, answer
        if failure is not None:
            raise failure

    def _using(self, server: _Server, call: Callable[[BeanstalkdConnection], T]) -> T:
        if self.several:
            server.connection.connect_timeout = (RETRY_CONNECT_TIMEOUT if server.down_for else
                                                 self._connect_timeout[id(server)])
        try:
            answer = call(server.connection)
        except TubeUnavailable as error:
            server.failed(str(error))
            raise
        if server.down_for:
            server.answered()
        return answer

    def _reference(self, server: _Server, job_id: int) -> int:
        if server.number and job_id > _JOB_ID_MASK:
            raise TubeUnavailable(f"beanstalkd at {server.address} gave job id {job_id}, past the 2**{JOB_ID_BITS} "
                                  "pheanq records beside a server's number")
        return job_reference(server.number, job_id)

    def _server_numbered(self, number: int, reference: int) -> _Server:
        for server in self._servers_numbered():
            if server.number == number:
                return server
        name = self._names.get(number)
        raise TubeUnavailable(f"job {reference & _JOB_ID_MASK} is on beanstalkd server #{number}"
                              + (f" ({name})" if name else "") + ", which is not in this process's list of servers")

    def _servers_numbered(self) -> list[_Server]:
        """The servers, with their numbers, asked of the database once (several servers only)."""
        if not self._numbered:
            if self._numbering is None:
                raise ValueError("several beanstalkd servers need a numbering (pheanq.storage.servers)")
            try:
                numbers = self._numbering([server.address for server in self._servers])
            except StoreUnavailable as error:
                raise TubeUnavailable(f"the beanstalkd servers' numbers could not be read: {error}") from None
            for server in self._servers:
                server.number = numbers[server.address]
            self._names = {number: address for address, number in numbers.items()}
            self._numbered = True
        return self._servers

    def _every_server_down(self) -> str:
        return "; ".join(f"{server.address}: {server.reason or 'down'}" for server in self._servers)


def added_up(found: list[dict[str, Any]]) -> dict[str, Any]:
    """stats-tube of several servers as one: the counts added up, the pause figures the longest."""
    total = dict(found[0])
    for stats in found[1:]:
        for key, value in stats.items():
            if key.startswith(_SUMMED_PREFIXES) and isinstance(value, int):
                total[key] = int(total.get(key, 0)) + value
            elif key.startswith("pause") and isinstance(value, int):
                total[key] = max(int(total.get(key, 0)), value)
    return total
