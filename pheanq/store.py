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
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, NoSuchModuleError, OperationalError, ProgrammingError

from pheanq.clock import utc_now
from pheanq.errors import ConfigError, SchemaMissing, StoreUnavailable
from pheanq.lease import stale_after
from pheanq.schedule import EARLY_TOLERANCE, is_early
from pheanq.status import CLAIMABLE, Status, sources_of
from pheanq.tables import (
    BuriedRow,
    PoolRow,
    TaskRow,
    buried_table,
    lock_table,
    metadata,
    pool_table,
    task_table,
    tube_table,
)


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"
    MISSING = "missing"            # no row with that id
    FINISHED = "finished"          # done, failed: the job is a leftover
    HELD_ELSEWHERE = "held"        # working under another job: this job is a duplicate
    HELD_ALIVE = "alive"           # working under this job, and its holder still renews its lease
    EARLY = "early"                # not to run before its run_at: the job must wait


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

    def insert_task(self, command: str, data: str, tube: str, priority: int, ttr: int, timeout: int | None = None,
                    run_at: dt.datetime | None = None, conn: Connection | None = None) -> int:
        """Insert a `new` task; on `conn` (an application's transaction) when given, else in its own."""
        now = utc_now()
        insert = task_table.insert().values(command=command, data=data, tube=tube, status=Status.NEW.value,
                                            priority=priority, ttr=ttr, timeout=timeout, run_at=run_at, attempts=0,
                                            created=now, modified=now)
        if conn is not None:
            key = conn.execute(insert).inserted_primary_key
        else:
            with self.transaction() as own:
                key = own.execute(insert).inserted_primary_key
        assert key is not None
        return int(key[0])

    def unsent_task_ids(self, task_ids: list[int]) -> set[int]:
        """Those of `task_ids` that exist with no job recorded."""
        c = task_table.c
        found: set[int] = set()
        with self.transaction() as conn:
            for chunk in range(0, len(task_ids), 500):
                found.update(conn.execute(sa.select(c.id).where(
                    c.id.in_(task_ids[chunk:chunk + 500]), c.job_id.is_(None))).scalars())
        return found

    def delete_unsent(self, task_id: int) -> None:
        """Take back a task whose job beanstalkd refused for good, before anyone could see it run."""
        c = task_table.c
        with self.transaction() as conn:
            conn.execute(task_table.delete().where(c.id == task_id, c.status == Status.NEW.value,
                                                   c.job_id.is_(None)))

    def set_job_id(self, task_id: int, job_id: int) -> None:
        with self.transaction() as conn:
            conn.execute(task_table.update().where(task_table.c.id == task_id).values(job_id=job_id))

    def claim_task(self, task_id: int, job_id: int, worker: str) -> Claim:
        """Move the task to `working` for this job, or say why not. Compare-and-set UPDATEs only.

        A `working` row under this very job was held by a worker that lost its reservation. It is
        taken over only once that holder's lease is stale (it died, or it was cut off and has stopped
        its child); while the lease is renewed, the answer is HELD_ALIVE and the job must wait.
        """
        c = task_table.c
        now = utc_now()
        claimed = dict(status=Status.WORKING.value, job_id=job_id, worker=worker, attempts=c.attempts + 1,
                       started=now, finished=None, exit_code=None, modified=now, heartbeat=now)
        with self.transaction() as conn:
            due = sa.or_(c.run_at.is_(None), c.run_at <= now + EARLY_TOLERANCE)
            changed = conn.execute(
                task_table.update().where(c.id == task_id, c.status.in_([s.value for s in CLAIMABLE]), due)
                .values(**claimed)
            ).rowcount
            row = self._select_row(conn, task_id)
            if row is not None and changed == 0 and row.status in CLAIMABLE and is_early(row.run_at, now):
                return Claim(ClaimOutcome.EARLY, row)
            if row is not None and changed == 0 and row.status is Status.WORKING and row.job_id == job_id:
                if not is_stale(row, now):
                    return Claim(ClaimOutcome.HELD_ALIVE, row)
                # The same row, unchanged since it was read stale: nobody renewed the lease in between.
                changed = conn.execute(
                    task_table.update().where(c.id == task_id, c.status == Status.WORKING.value,
                                              c.attempts == row.attempts, _same(c.heartbeat, row.heartbeat))
                    .values(**claimed)
                ).rowcount
                row = self._select_row(conn, task_id)
        if row is None:
            return Claim(ClaimOutcome.MISSING, None)
        if changed == 1:
            return Claim(ClaimOutcome.CLAIMED, row)
        if row.status is Status.WORKING:
            return Claim(ClaimOutcome.HELD_ALIVE if row.job_id == job_id else ClaimOutcome.HELD_ELSEWHERE, row)
        return Claim(ClaimOutcome.FINISHED, row)

    def renew_lease(self, task_id: int, attempt: int) -> bool:
        """The holder's heartbeat; False when this attempt no longer holds the task."""
        c = task_table.c
        with self.transaction() as conn:
            return conn.execute(
                task_table.update().where(c.id == task_id, c.status == Status.WORKING.value, c.attempts == attempt)
                .values(heartbeat=utc_now())
            ).rowcount == 1

    def stall_task(self, task_id: int, attempt: int, log: str) -> bool:
        """`working` → `stalled` for an attempt whose worker is gone; False when the attempt no longer
        holds the task (it finished, or someone else already acted)."""
        return self._move(task_id, attempt, Status.STALLED, log=log, worker=None)

    def finish_task(self, task_id: int, attempt: int, status: Status, exit_code: int | None,
                    log: str | None) -> bool:
        """Record the end of an attempt; False when the attempt no longer owns the task.

        A `stalled` task still belongs to its last attempt until another worker claims it, so a result
        that arrives late (after a database outage) is kept rather than run again."""
        now = utc_now()
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
                        started=None, finished=None, run_at=None, modified=utc_now())
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

    def tasks_to_reconcile(self, tube: str | None, after_id: int, limit: int, settled_before: dt.datetime,
                           now: dt.datetime) -> list[TaskRow]:
        """The next `limit` tasks after `after_id` that should have a live job: waiting ones last changed
        before `settled_before` (a younger one's put may be in flight), and `working` ones whose lease is
        stale."""
        c = task_table.c
        beat = sa.func.coalesce(c.heartbeat, c.modified)
        waiting = sa.and_(c.status.in_([s.value for s in CLAIMABLE]), c.modified < settled_before)
        held = sa.and_(c.status == Status.WORKING.value, beat < now - dt.timedelta(seconds=stale_after(0)))
        query = sa.select(task_table).where(c.id > after_id, sa.or_(waiting, held)).order_by(c.id).limit(limit)
        if tube is not None:
            query = query.where(c.tube == tube)
        with self.transaction() as conn:
            rows = [_task_row(found) for found in conn.execute(query).mappings()]
        return [row for row in rows if row.status is not Status.WORKING or is_stale(row, now)]

    def record_job_if(self, task_id: int, status: Status, old_job_id: int | None, new_job_id: int) -> bool:
        """Note a re-sent job on a row still as the reconciler found it; False when it changed meanwhile."""
        c = task_table.c
        with self.transaction() as conn:
            return conn.execute(
                task_table.update().where(c.id == task_id, c.status == status.value, _same(c.job_id, old_job_id))
                .values(job_id=new_job_id)
            ).rowcount == 1

    def take_lock(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew a named lock shared by every machine on this database, for `seconds`."""
        c = lock_table.c
        now = utc_now()
        expires = now + dt.timedelta(seconds=seconds)
        with self.transaction() as conn:
            if conn.execute(
                lock_table.update().where(c.name == name, sa.or_(c.expires < now, c.holder == holder))
                .values(holder=holder, expires=expires)
            ).rowcount == 1:
                return True
            if conn.execute(sa.select(c.name).where(c.name == name)).first() is not None:
                return False
        try:
            with self.transaction() as conn:
                conn.execute(lock_table.insert().values(name=name, holder=holder, expires=expires))
        except IntegrityError:
            return False  # another machine inserted it first
        return True

    def lock_holder(self, name: str) -> str | None:
        c = lock_table.c
        with self.transaction() as conn:
            found = conn.execute(sa.select(c.holder, c.expires).where(c.name == name)).first()
        return None if found is None else f"{found.holder}, until {found.expires:%Y-%m-%d %H:%M:%S} UTC"

    def free_lock(self, name: str, holder: str) -> None:
        c = lock_table.c
        with self.transaction() as conn:
            conn.execute(lock_table.delete().where(c.name == name, c.holder == holder))

    def record_buried(self, row: BuriedRow) -> None:
        with self.transaction() as conn:
            conn.execute(buried_table.insert().values(**dataclasses.asdict(row)))

    def list_buried(self, beanstalkd: str, tube: str) -> list[BuriedRow]:
        """What was recorded of the jobs buried in a tube, newest record of each job only."""
        c = buried_table.c
        query = sa.select(*[column for column in buried_table.c if column.name != "id"]) \
            .where(c.beanstalkd == beanstalkd, c.tube == tube).order_by(c.job_id, c.id)
        with self.transaction() as conn:
            latest = {row["job_id"]: BuriedRow(**dict(row)) for row in conn.execute(query).mappings()}
        return list(latest.values())

    def forget_buried(self, beanstalkd: str, tube: str, job_ids: list[int]) -> None:
        c = buried_table.c
        with self.transaction() as conn:
            for chunk in range(0, len(job_ids), 500):
                conn.execute(buried_table.delete().where(c.beanstalkd == beanstalkd, c.tube == tube,
                                                         c.job_id.in_(job_ids[chunk:chunk + 500])))

    def set_pause(self, tube: str, until: dt.datetime, by: str) -> None:
        c = tube_table.c
        with self.transaction() as conn:
            conn.execute(tube_table.delete().where(c.name == tube))
            conn.execute(tube_table.insert().values(name=tube, paused_until=until, paused_by=by, paused_at=utc_now()))

    def clear_pause(self, tube: str) -> bool:
        """Resume a tube; False when it was not paused (or its pause had run out)."""
        c = tube_table.c
        with self.transaction() as conn:
            paused = conn.execute(sa.select(c.name).where(c.name == tube, c.paused_until > utc_now())).first()
            conn.execute(tube_table.delete().where(c.name == tube))
        return paused is not None

    def paused_tubes(self, now: dt.datetime) -> dict[str, dt.datetime]:
        """Tube -> the end of its pause, for the tubes paused now."""
        c = tube_table.c
        with self.transaction() as conn:
            return {name: until for name, until in
                    conn.execute(sa.select(c.name, c.paused_until).where(c.paused_until > now))}

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
        sources = [s.value for s in sources_of(target) if s in (Status.WORKING, Status.STALLED)]
        if values.get("log") is not None:
            # Each attempt appends its entry, so an interruption or a takeover stays visible.
            values["log"] = sa.func.coalesce(c.log, "") + values["log"]
        with self.transaction() as conn:
            return conn.execute(
                task_table.update()
                .where(c.id == task_id, c.status.in_(sources), c.attempts == attempt)
                .values(status=target.value, modified=utc_now(), **values)
            ).rowcount == 1

    @staticmethod
    def _select_row(conn: Connection, task_id: int) -> TaskRow | None:
        found = conn.execute(sa.select(task_table).where(task_table.c.id == task_id)).mappings().first()
        return None if found is None else _task_row(found)

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
                tables = [name for name in metadata.tables if not inspector.has_table(name)]
                missing = [f"the table {name}" for name in tables]
                for name, table in metadata.tables.items():
                    if name not in tables:
                        present = {column["name"] for column in inspector.get_columns(name)}
                        missing += [f"the column {name}.{column.name}" for column in table.columns
                                    if column.name not in present]
        except DBAPIError as probe:
            reason = str(getattr(probe, "orig", probe)).strip().splitlines()[0]
            return StoreUnavailable(f"database {self.safe_url} is unreachable: {reason}")
        if not missing:
            if isinstance(error, OperationalError):
                # The server answered the probe, but the statement failed on the server's state: starting up,
                # shutting down, a lock or deadlock. Another try later is the answer, as for an outage.
                reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
                return StoreUnavailable(f"database {self.safe_url} is unavailable: {reason}")
            return error
        return SchemaMissing(self.safe_url, None if len(tables) == len(metadata.tables) else missing)


def is_stale(row: TaskRow, now: dt.datetime) -> bool:
    """Whether a `working` row's holder stopped renewing its lease (see pheanq.lease)."""
    last = row.heartbeat or row.started or row.modified
    return (now - last).total_seconds() > stale_after(row.ttr)


# No wait on a database server is unbounded: a half-open connection (a server gone mid-answer, a cut
# network) must fail, not hang a worker. pheanq's statements are short, so 30 s is far beyond any of them.
_BOUNDED_WAITS: dict[str, dict[str, Any]] = {
    "postgresql": {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                   "keepalives_count": 3, "tcp_user_timeout": 30_000},
    "mysql": {"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30},
    "mariadb": {"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30},
}


def create_engine(url: str) -> Engine:
    """An engine with the driver and settings pheanq wants for each backend."""
    parsed = _with_driver(make_url(url))
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            engine = sa.create_engine(parsed, connect_args={"timeout": 30})
            sa.event.listen(engine, "connect", _tune_sqlite)
            return engine
        return sa.create_engine(parsed, pool_pre_ping=True, connect_args=_BOUNDED_WAITS.get(backend, {}))
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


def _task_row(found: Any) -> TaskRow:
    values = dict(found)
    values["status"] = Status(values["status"])
    return TaskRow(**values)


def _same(column: Any, value: Any) -> Any:
    """`column = value` that also matches NULL to None."""
    return column.is_(None) if value is None else column == value

