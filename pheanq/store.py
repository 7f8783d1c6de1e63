"""The task table and every SQL statement pheanq runs. Nothing else in pheanq writes SQL.

Each write that changes a task's status is one compare-and-set UPDATE whose
condition comes from `status.TRANSITIONS`, so two workers (or a worker and a
person) can never both win the same task.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, OperationalError, ProgrammingError

from pheanq.errors import ConfigError, SchemaMissing, StoreUnavailable
from pheanq.status import CLAIMABLE, Status, sources_of

metadata = sa.MetaData()

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

task_table = sa.Table(
    "pheanq_task",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("command", sa.String(255), nullable=False),
    sa.Column("data", _LongText, nullable=False),
    sa.Column("tube", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.BigInteger(), nullable=False),
    sa.Column("ttr", sa.Integer(), nullable=False),
    sa.Column("job_id", sa.BigInteger(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("exit_code", sa.Integer(), nullable=True),
    sa.Column("log", _LongText, nullable=True),
    sa.Column("worker", sa.String(255), nullable=True),
    sa.Column("created", _Timestamp, nullable=False),
    sa.Column("started", _Timestamp, nullable=True),
    sa.Column("finished", _Timestamp, nullable=True),
    sa.Column("modified", _Timestamp, nullable=False),
    # `status` and `show` group and filter by these; cleanup scans done rows by age.
    sa.Index("ix_pheanq_task_tube_status", "tube", "status"),
    sa.Index("ix_pheanq_task_status_finished", "status", "finished"),
)


# What each worker-tender last reported of its pool: one row for the tender, one per worker.
pool_table = sa.Table(
    "pheanq_worker",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("tender_pid", sa.Integer(), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("tubes", sa.String(1024), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("task_id", sa.BigInteger(), nullable=True),
    sa.Column("started", _Timestamp, nullable=False),
    sa.Column("heartbeat", _Timestamp, nullable=False),
    sa.Index("ix_pheanq_worker_host_tender", "host", "tender_pid"),
)


@dataclasses.dataclass(frozen=True)
class PoolRow:
    host: str
    tender_pid: int
    pid: int
    kind: str               # "tender" or "worker"
    tubes: str              # comma-separated
    state: str
    task_id: int | None
    started: dt.datetime
    heartbeat: dt.datetime


@dataclasses.dataclass(frozen=True)
class TaskRow:
    id: int
    command: str
    data: str
    tube: str
    status: Status
    priority: int
    ttr: int
    job_id: int | None
    attempts: int
    exit_code: int | None
    log: str | None
    worker: str | None
    created: dt.datetime
    started: dt.datetime | None
    finished: dt.datetime | None
    modified: dt.datetime


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"
    MISSING = "missing"            # no row with that id
    FINISHED = "finished"          # done, failed: the job is a leftover
    HELD_ELSEWHERE = "held"        # working under another job: this job is a duplicate


@dataclasses.dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    row: TaskRow | None


class Store:
    """All reads and writes of pheanq's tables, on SQLite, PostgreSQL or MySQL/MariaDB."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def insert_task(self, command: str, data: str, tube: str, priority: int, ttr: int) -> int:
        now = _now()
        with self.transaction() as conn:
            result = conn.execute(task_table.insert().values(
                command=command, data=data, tube=tube, status=Status.NEW.value, priority=priority, ttr=ttr,
                attempts=0, created=now, modified=now,
            ))
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def set_job_id(self, task_id: int, job_id: int) -> None:
        with self.transaction() as conn:
            conn.execute(task_table.update().where(task_table.c.id == task_id).values(job_id=job_id))

    def claim_task(self, task_id: int, job_id: int, worker: str) -> Claim:
        """Move the task to `working` for this job, or say why not. One compare-and-set UPDATE.

        A `working` row whose job is this very job was held by a worker that lost its
        reservation (it died, or its TTR ran out), so this worker takes it over.
        """
        c = task_table.c
        now = _now()
        claimable = c.status.in_([s.value for s in CLAIMABLE])
        taken_over = sa.and_(c.status == Status.WORKING.value, c.job_id == job_id)
        with self.transaction() as conn:
            changed = conn.execute(
                task_table.update()
                .where(c.id == task_id, sa.or_(claimable, taken_over))
                .values(status=Status.WORKING.value, job_id=job_id, worker=worker, attempts=c.attempts + 1,
                        started=now, finished=None, exit_code=None, modified=now)
            ).rowcount
            row = self._select_row(conn, task_id)
        if row is None:
            return Claim(ClaimOutcome.MISSING, None)
        if changed == 1:
            return Claim(ClaimOutcome.CLAIMED, row)
        if row.status is Status.WORKING:
            return Claim(ClaimOutcome.HELD_ELSEWHERE, row)
        return Claim(ClaimOutcome.FINISHED, row)

    def finish_task(self, task_id: int, attempt: int, status: Status, exit_code: int | None,
                    log: str | None) -> bool:
        """Record the end of an attempt; False when the attempt no longer owns the task."""
        now = _now()
        return self._move(task_id, attempt, status, exit_code=exit_code, log=log, finished=now)

    def release_task(self, task_id: int, attempt: int, log: str) -> bool:
        """Hand a claimed task back (`working` → `new`) so another worker runs it."""
        return self._move(task_id, attempt, Status.NEW, log=log, worker=None)

    def restart_task(self, task_id: int) -> TaskRow | None:
        """Move a task to `restarted` for regeneration; None when its status does not allow it."""
        c = task_table.c
        with self.transaction() as conn:
            changed = conn.execute(
                task_table.update()
                .where(c.id == task_id, c.status.in_([s.value for s in sources_of(Status.RESTARTED)]))
                .values(status=Status.RESTARTED.value, job_id=None, worker=None, exit_code=None,
                        started=None, finished=None, modified=_now())
            ).rowcount
            return self._select_row(conn, task_id) if changed == 1 else None

    def check_schema(self) -> None:
        """Raise SchemaMissing when the database was never upgraded (StoreUnavailable when it is down)."""
        with self.transaction() as conn:
            conn.execute(sa.select(task_table.c.id).limit(1)).all()

    def find_task(self, task_id: int) -> TaskRow | None:
        with self.transaction() as conn:
            return self._select_row(conn, task_id)

    def count_tasks(self) -> list[tuple[str, Status, int]]:
        """(tube, status, count) for every tube and status that has tasks."""
        c = task_table.c
        query = sa.select(c.tube, c.status, sa.func.count()).group_by(c.tube, c.status).order_by(c.tube, c.status)
        with self.transaction() as conn:
            return [(tube, Status(status), int(n)) for tube, status, n in conn.execute(query)]

    def delete_done_before(self, cutoff: dt.datetime) -> int:
        c = task_table.c
        with self.transaction() as conn:
            return int(conn.execute(
                task_table.delete().where(c.status == Status.DONE.value, c.finished < cutoff)
            ).rowcount)

    def replace_pool(self, host: str, tender_pid: int, rows: list[PoolRow]) -> None:
        """Replace what this tender reported before with `rows` (one transaction)."""
        c = pool_table.c
        with self.transaction() as conn:
            conn.execute(pool_table.delete().where(c.host == host, c.tender_pid == tender_pid))
            if rows:
                conn.execute(pool_table.insert(), [dataclasses.asdict(row) for row in rows])

    def list_pool(self) -> list[PoolRow]:
        c = pool_table.c
        query = sa.select(*[column for column in pool_table.c if column.name != "id"]) \
            .order_by(c.host, c.tubes, c.tender_pid, c.kind, c.pid)  # "tender" sorts before "worker"
        with self.transaction() as conn:
            return [PoolRow(**dict(row)) for row in conn.execute(query).mappings()]

    def _move(self, task_id: int, attempt: int, target: Status, **values: Any) -> bool:
        c = task_table.c
        sources = [s.value for s in sources_of(target) if s is Status.WORKING]
        if values.get("log") is not None:
            # Each attempt appends its entry, so an interruption or a takeover stays visible.
            values["log"] = sa.func.coalesce(c.log, "") + values["log"]
        with self.transaction() as conn:
            return conn.execute(
                task_table.update()
                .where(c.id == task_id, c.status.in_(sources), c.attempts == attempt)
                .values(status=target.value, modified=_now(), **values)
            ).rowcount == 1

    @staticmethod
    def _select_row(conn: Connection, task_id: int) -> TaskRow | None:
        found = conn.execute(sa.select(task_table).where(task_table.c.id == task_id)).mappings().first()
        if found is None:
            return None
        values = dict(found)
        values["status"] = Status(values["status"])
        return TaskRow(**values)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, ProgrammingError) as error:
            raise self._explain(error) from error

    def _explain(self, error: DBAPIError) -> Exception:
        """Tell an outage, or a database not upgraded to this version's schema, from a real SQL error."""
        try:
            with self.engine.connect() as conn:
                inspector = sa.inspect(conn)
                missing = [name for name in metadata.tables if not inspector.has_table(name)]
        except DBAPIError as probe:
            reason = str(getattr(probe, "orig", probe)).strip().splitlines()[0]
            return StoreUnavailable(f"database {self.safe_url} is unreachable: {reason}")
        if not missing:
            return error
        return SchemaMissing(self.safe_url, None if len(missing) == len(metadata.tables) else missing)


def create_engine(url: str) -> Engine:
    """An engine with the driver and settings pheanq wants for each backend."""
    parsed = _with_driver(make_url(url))
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            engine = sa.create_engine(parsed, connect_args={"timeout": 30})
            sa.event.listen(engine, "connect", _tune_sqlite)
            return engine
        return sa.create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    except (NoSuchModuleError, ImportError) as error:
        safe = make_url(url).render_as_string(hide_password=True)
        raise ConfigError(f"database_url: {safe}: the driver {parsed.drivername!r} is not available "
                          f"({error})") from None


def _with_driver(url: URL) -> URL:
    """Plain postgresql:// and mysql:// URLs use the drivers pheanq installs as extras."""
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in ("mysql", "mariadb"):
        return url.set(drivername=f"{url.drivername}+pymysql")
    return url


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _now() -> dt.datetime:
    """Naive UTC: every backend stores it the same way."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
