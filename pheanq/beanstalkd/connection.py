"""Every beanstalkd call pheanq makes. Nothing else in pheanq speaks to beanstalkd.

One `BeanstalkdConnection` is one connection to one server, opened on first use
and opened again after it broke; it puts into and reserves from any tube (a tube
is a name, passed to each call). Every network wait is bounded, and a broken or
refused connection is a `TubeUnavailable` naming the server, never a raw socket
error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import greenstalk

from pheanq.errors import InvalidInput, TubeUnavailable

T = TypeVar("T")

DEFAULT_CONNECT_TIMEOUT = 5.0
# How long an answer to a quick command may take before the server counts as gone.
DEFAULT_IO_TIMEOUT = 10.0
# Puts (or deletes) sent in one write by put_many (delete_many): their answers (about 15 bytes each) stay far below
# a socket's buffer.
PIPELINED_PUTS = 1000


@dataclasses.dataclass(frozen=True)
class ReservedJob:
    id: int
    body: bytes


@dataclasses.dataclass(frozen=True)
class JobInfo:
    """A job as beanstalkd holds it now, from stats-job and peek."""

    id: int
    tube: str
    state: str      # ready, delayed, reserved or buried
    priority: int
    body: bytes
    time_left: int = 0  # seconds until a reserved job's TTR runs out (negative: past it), or a delayed one is ready


@dataclasses.dataclass(frozen=True)
class ServerIdentity:
    """What tells one run of a beanstalkd server from the next (its stats): a restart gives it a new `id`
    (beanstalkd 1.10 and later) and usually a new pid, and starts its uptime and its job counter again."""
    instance: str
    pid: int
    uptime: int
    total_jobs: int

    def restarted_since(self, earlier: ServerIdentity) -> bool:
        """This is another run of the server than `earlier` (seen before it): what it held then may be gone."""
        return (self.instance != earlier.instance or self.pid != earlier.pid or self.uptime < earlier.uptime
                or self.total_jobs < earlier.total_jobs)


@dataclasses.dataclass(frozen=True)
class JobToPut:
    body: bytes
    priority: int
    delay: int
    ttr: int


@dataclasses.dataclass(frozen=True)
class PutRefused:
    """A put the server answered without taking the job."""

    reason: str
    too_big: bool = False


class BeanstalkdConnection:
    def __init__(self, address: tuple[str, int], connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 io_timeout: float = DEFAULT_IO_TIMEOUT) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self._client: greenstalk.Client[bytes] | None = None
        self._sock: socket.socket | None = None
        self._using = greenstalk.DEFAULT_TUBE
        self._watching: set[str] = {greenstalk.DEFAULT_TUBE}
        # greenstalk is not thread-safe; an application may queue from several threads.
        self._lock = threading.RLock()

    @property
    def server(self) -> str:
        """`host:port`, as messages and the buried jobs' records name the server."""
        host, port = self.address
        return f"{host}:{port}"

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.close()
            self._client = None
            self._sock = None

    def put(self, tube: str, body: bytes, priority: int, delay: int, ttr: int) -> int:
        def put(client: greenstalk.Client[bytes]) -> int:
            self._use(client, tube)
            return client.put(body, priority=priority, delay=delay, ttr=ttr)

        try:
            return self._call(put)
        except greenstalk.JobTooBigError:
            raise InvalidInput(f"beanstalkd at {self.server} refused a job of {len(body)} bytes as too big") from None
        except greenstalk.BuriedError as error:
            # The server ran out of memory and buried the job: it exists, kick makes it ready.
            if error.id is None:
                raise TubeUnavailable(f"beanstalkd at {self.server} is out of memory") from None
            return error.id

    def put_many(self, tube: str, jobs: Sequence[JobToPut]) -> list[int | PutRefused]:
        """Put the jobs into `tube` in one write, then read the answers (beanstalkd answers in order): one round
        trip for them all rather than one each. Each job's id, or a PutRefused for one the server did not take
        (too big, draining, out of memory), the others being put all the same. TubeUnavailable when the
        connection broke: which of the jobs went in is then unknown."""

        def put_all(client: greenstalk.Client[bytes]) -> list[int | PutRefused]:
            self._use(client, tube)
            assert self._sock is not None
            taken: list[int | PutRefused] = []
            for start in range(0, len(jobs), PIPELINED_PUTS):
                part = jobs[start:start + PIPELINED_PUTS]
                self._sock.sendall(b"".join(b"put %d %d %d %d\r\n%s\r\n" % (job.priority, job.delay, job.ttr,
                                                                             len(job.body), job.body)
                                            for job in part))
                # greenstalk's own reader holds nothing now (each of its commands reads its whole answer), and
                # these answers are all the server sends until the next command: they are read off the socket.
                taken += [_put_answer(line, self.server) for line in _answer_lines(self._sock, len(part))]
            return taken

        return self._call(put_all)

    def reserve(self, tubes: Iterable[str], timeout: int) -> ReservedJob | None:
        """Wait up to `timeout` seconds for a job from any of `tubes`; None when none came."""
        wanted = set(tubes)

        def reserve(client: greenstalk.Client[bytes]) -> ReservedJob | None:
            self._watch(client, wanted)
            self._set_socket_timeout(timeout + self.io_timeout)
            try:
                job = client.reserve(timeout=timeout)
            except (greenstalk.TimedOutError, greenstalk.DeadlineSoonError):
                return None
            finally:
                self._set_socket_timeout(self.io_timeout)
            return ReservedJob(job.id, job.body)

        return self._call(reserve)

    def reserve_started(self, tubes: Iterable[str], timeout: int) -> socket.socket:
        """Send a reserve of up to `timeout` seconds and return at once, with the socket its answer comes on: a wait
        on several servers at once selects on their sockets. Then `reserve_answer` reads the answer, or `close`
        gives the wait up (beanstalkd puts back a job it reserved for a connection that closed)."""
        wanted = set(tubes)

        def start(client: greenstalk.Client[bytes]) -> socket.socket:
            self._watch(client, wanted)
            assert self._sock is not None
            self._sock.sendall(b"reserve-with-timeout %d\r\n" % timeout)
            return self._sock

        return self._call(start)

    def reserve_answer(self) -> ReservedJob | None:
        """The answer to the reserve `reserve_started` sent: the job, or None when none came in time."""
        def read(_client: greenstalk.Client[bytes]) -> ReservedJob | None:
            assert self._sock is not None
            return _reserve_answer(self._sock)

        return self._call(read)

    def touch(self, job_id: int) -> bool:
        """Renew the reservation; False when this connection no longer holds the job. A connection that broke took
        its reservations with it, so no new one is opened for a touch."""
        with self._lock:
            if self._client is None:
                return False
            return self._on_job(job_id, lambda client, job: client.touch(job))

    def delete(self, job_id: int) -> bool:
        return self._on_job(job_id, lambda client, job: client.delete(job))

    def delete_many(self, job_ids: Sequence[int]) -> list[bool]:
        """Delete the jobs in one write, then read the answers, as put_many does: one round trip for them all.
        Each answer says whether the job was deleted (False: no such job, or another connection reserved it)."""

        def delete_all(_client: greenstalk.Client[bytes]) -> list[bool]:
            assert self._sock is not None
            deleted: list[bool] = []
            for start in range(0, len(job_ids), PIPELINED_PUTS):
                part = job_ids[start:start + PIPELINED_PUTS]
                self._sock.sendall(b"".join(b"delete %d\r\n" % job_id for job_id in part))
                deleted += [_delete_answer(line) for line in _answer_lines(self._sock, len(part))]
            return deleted

        return self._call(delete_all)

    def release(self, job_id: int, priority: int, delay: int = 0) -> bool:
        return self._on_job(job_id, lambda client, job: client.release(job, priority=priority, delay=delay))

    def bury(self, job_id: int, priority: int = 0) -> bool:
        return self._on_job(job_id, lambda client, job: client.bury(job, priority=priority))

    def inspect(self, job_id: int) -> JobInfo | None:
        """The job with this id in any state (stats-job, then peek for its body), or None when beanstalkd
        has no such job. After a restart without binlog, ids start again from 1: the body tells whose it is."""
        def inspect(client: greenstalk.Client[bytes]) -> JobInfo:
            stats = client.stats_job(job_id)
            body = client.peek(job_id).body
            return JobInfo(job_id, str(stats["tube"]), str(stats["state"]), int(stats["pri"]), body,
                           int(stats.get("time-left", 0)))

        try:
            return self._call(inspect)
        except greenstalk.NotFoundError:
            return None

    def kick_delayed(self, job_id: int) -> bool:
        """Make the job ready now if it is delayed (stats-job, then kick-job); False when it is not delayed, or
        gone."""
        def kick(client: greenstalk.Client[bytes]) -> bool:
            if client.stats_job(job_id)["state"] != "delayed":
                return False
            client.kick_job(job_id)
            return True

        try:
            return self._call(kick)
        except greenstalk.NotFoundError:
            return False

    def releases(self, job_id: int) -> int:
        """How many times the job was released (stats-job); 0 when beanstalkd has no such job."""
        try:
            return self._call(lambda client: int(client.stats_job(job_id)["releases"]))
        except greenstalk.NotFoundError:
            return 0

    def kick_job(self, job_id: int) -> bool:
        """Make a buried (or delayed) job ready; False when there is no such job in those states."""
        return self._on_job(job_id, lambda client, job: client.kick_job(job))

    def kick(self, tube: str, bound: int) -> int:
        """Kick up to `bound` jobs of the tube: buried ones, or delayed ones when none is buried."""
        def kick(client: greenstalk.Client[bytes]) -> int:
            self._use(client, tube)
            return client.kick(bound)

        return self._call(kick)

    def peek_buried(self, tube: str) -> JobInfo | None:
        """The next buried job of the tube (the one `kick` would take first), or None."""
        def peek(client: greenstalk.Client[bytes]) -> int:
            self._use(client, tube)
            return client.peek_buried().id

        try:
            job_id = self._call(peek)
        except greenstalk.NotFoundError:
            return None
        return self.inspect(job_id)

    def pause(self, tube: str, seconds: int) -> None:
        """beanstalkd's pause-tube: no job is reserved from the tube for `seconds` (0 resumes it). A tube
        beanstalkd does not know yet (no job, no watcher) cannot be paused there: nothing to do."""
        with contextlib.suppress(greenstalk.NotFoundError):
            self._call(lambda client: client.pause_tube(tube, seconds))

    def tube_stats(self, tube: str) -> dict[str, Any] | None:
        """beanstalkd's stats-tube, or None for a tube that does not exist (no job and no watcher)."""
        try:
            return dict(self._call(lambda client: client.stats_tube(tube)))
        except greenstalk.NotFoundError:
            return None

    def identity(self) -> ServerIdentity:
        """Which run of the server this is (stats): compare two with `restarted_since`."""
        stats = self._call(lambda client: client.stats())
        return ServerIdentity(str(stats.get("id", "")), int(stats["pid"]), int(stats["uptime"]),
                              int(stats["total-jobs"]))

    def tubes(self) -> list[str]:
        return self._call(lambda client: client.tubes())

    def _on_job(self, job_id: int, action: Callable[[greenstalk.Client[bytes], greenstalk.Job[bytes]], None]) -> bool:
        job: greenstalk.Job[bytes] = greenstalk.Job(job_id, b"")
        try:
            self._call(lambda client: action(client, job))
        except greenstalk.NotFoundError:
            return False
        return True

    def _call(self, operation: Callable[[greenstalk.Client[bytes]], T]) -> T:
        with self._lock:
            return self._call_locked(operation)

    def _call_locked(self, operation: Callable[[greenstalk.Client[bytes]], T]) -> T:
        try:
            return operation(self._connected())
        except (OSError, greenstalk.UnknownResponseError, AssertionError) as error:
            # AssertionError: greenstalk's own framing checks on a cut-off answer.
            self.close()
            raise TubeUnavailable(f"beanstalkd at {self.server} is unreachable: {_reason(error)}") from None
        except greenstalk.DrainingError:
            raise TubeUnavailable(f"beanstalkd at {self.server} is draining and takes no new jobs") from None

    def _connected(self) -> greenstalk.Client[bytes]:
        if self._client is None:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout)
            sock.settimeout(self.io_timeout)
            self._sock = sock
            self._client = greenstalk.Client(sock, encoding=None)
            self._using = greenstalk.DEFAULT_TUBE
            self._watching = {greenstalk.DEFAULT_TUBE}
        return self._client

    def _use(self, client: greenstalk.Client[bytes], tube: str) -> None:
        if self._using != tube:
            client.use(tube)
            self._using = tube

    def _watch(self, client: greenstalk.Client[bytes], tubes: set[str]) -> None:
        # Watch the new ones before ignoring the old: beanstalkd refuses to ignore the last tube.
        for tube in sorted(tubes - self._watching):
            client.watch(tube)
        for tube in sorted(self._watching - tubes):
            client.ignore(tube)
        self._watching = set(tubes)

    def _set_socket_timeout(self, seconds: float) -> None:
        if self._sock is not None:
            self._sock.settimeout(seconds)


def _reason(error: BaseException) -> str:
    if isinstance(error, socket.timeout):
        return "no answer in time"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _answer_lines(sock: socket.socket, count: int) -> list[bytes]:
    """The next `count` answer lines on `sock` (answers to puts and deletes are one line each)."""
    received = bytearray()
    while received.count(b"\r\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        received += chunk
    return bytes(received).split(b"\r\n")[:count]


def _reserve_answer(sock: socket.socket) -> ReservedJob | None:
    """Read a reserve's answer off `sock`, and nothing past it (no other answer is pending on the connection)."""
    received = bytearray()
    while b"\r\n" not in received:
        received += _received(sock, 65536)  # nothing follows the answer: a large read cannot take another's bytes
    line, _, rest = bytes(received).partition(b"\r\n")
    words = line.split()
    if words in ([b"TIMED_OUT"], [b"DEADLINE_SOON"]):
        return None
    if len(words) != 3 or words[0] != b"RESERVED" or not (words[1].isdigit() and words[2].isdigit()):
        raise ConnectionError(f"unexpected answer to a reserve: {line[:80]!r}")
    body = bytearray(rest)
    size = int(words[2])
    while len(body) < size + 2:
        body += _received(sock, size + 2 - len(body))
    if body[size:] != b"\r\n":
        raise ConnectionError("a reserved job's body did not end where its size said")
    return ReservedJob(int(words[1]), bytes(body[:size]))


def _received(sock: socket.socket, most: int) -> bytes:
    chunk = sock.recv(most)
    if not chunk:
        raise ConnectionError("the server closed the connection")
    return chunk


def _delete_answer(line: bytes) -> bool:
    if line in (b"DELETED", b"NOT_FOUND"):
        return line == b"DELETED"
    raise ConnectionError(f"unexpected answer to a delete: {line[:80]!r}")


def _put_answer(line: bytes, server: str) -> int | PutRefused:
    words = line.split()
    if len(words) == 2 and words[0] in (b"INSERTED", b"BURIED") and words[1].isdigit():
        return int(words[1])  # BURIED: the server ran out of memory and buried the job; it exists, kick makes it ready
    if words == [b"JOB_TOO_BIG"]:
        return PutRefused(f"beanstalkd at {server} refused the job as too big", too_big=True)
    if words == [b"DRAINING"]:
        return PutRefused(f"beanstalkd at {server} is draining and takes no new jobs")
    if words == [b"OUT_OF_MEMORY"]:
        return PutRefused(f"beanstalkd at {server} is out of memory")
    raise ConnectionError(f"unexpected answer to a put: {line[:80]!r}")
