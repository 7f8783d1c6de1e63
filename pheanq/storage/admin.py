"""The statements for everything but tasks: named locks, buried jobs' reasons, paused tubes and the pool
reports of worker-tenders."""

from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from pheanq.clock import utc_now
from pheanq.limits import pages
from pheanq.storage.engine import Database
from pheanq.storage.tables import BuriedRow, WorkerRow, buried_table, lock_table, tube_table, worker_table


class AdminStatements:
    def __init__(self, database: Database) -> None:
        self.database = database

    def take_lock(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew a named lock shared by every machine on this database, for `seconds`."""
        c = lock_table.c
        now = utc_now()
        expires = now + dt.timedelta(seconds=seconds)
        with self.database.transaction() as conn:
            if conn.execute(
                lock_table.update().where(c.name == name, sa.or_(c.expires < now, c.holder == holder))
                .values(holder=holder, expires=expires)
            ).rowcount == 1:
                return True
            if conn.execute(sa.select(c.name).where(c.name == name)).first() is not None:
                return False
        try:
            with self.database.transaction() as conn:
                conn.execute(lock_table.insert().values(name=name, holder=holder, expires=expires))
        except IntegrityError:
            return False  # another machine inserted it first
        return True

    def lock_holder(self, name: str) -> str | None:
        c = lock_table.c
        with self.database.transaction() as conn:
            found = conn.execute(sa.select(c.holder, c.expires).where(c.name == name)).first()
        return None if found is None else f"{found.holder}, until {found.expires:%Y-%m-%d %H:%M:%S} UTC"

    def free_lock(self, name: str, holder: str) -> None:
        c = lock_table.c
        with self.database.transaction() as conn:
            conn.execute(lock_table.delete().where(c.name == name, c.holder == holder))

    def record_buried(self, row: BuriedRow, keep: int) -> None:
        """Record why a job was buried, in place of an earlier record of the same job, and drop the oldest
        records beyond the newest `keep` (of every server and tube)."""
        c = buried_table.c
        with self.database.transaction() as conn:
            # Found first, then deleted by primary key: a DELETE by the job's columns would lock a gap of their
            # index on MySQL, where another worker burying a neighbouring job inserts (a deadlock).
            earlier = conn.execute(sa.select(c.id).where(c.beanstalkd == row.beanstalkd, c.tube == row.tube,
                                                         c.job_id == row.job_id)).scalars().all()
            if earlier:
                conn.execute(buried_table.delete().where(c.id.in_(earlier)))
            conn.execute(buried_table.insert().values(**dataclasses.asdict(row)))
            # Two statements: MySQL cannot delete from a table that a subquery of the same statement reads.
            oldest_kept = conn.execute(sa.select(c.id).order_by(c.id.desc()).offset(keep - 1).limit(1)).scalar()
            if oldest_kept is not None:
                conn.execute(buried_table.delete().where(c.id < oldest_kept))

    def list_buried(self, beanstalkd: str, tube: str) -> list[BuriedRow]:
        """What was recorded of the jobs buried in a tube, newest record of each job only."""
        c = buried_table.c
        query = sa.select(*[column for column in buried_table.c if column.name != "id"]) \
            .where(c.beanstalkd == beanstalkd, c.tube == tube).order_by(c.job_id, c.id)
        with self.database.transaction() as conn:
            latest = {row["job_id"]: BuriedRow(**dict(row)) for row in conn.execute(query).mappings()}
        return list(latest.values())

    def forget_buried(self, beanstalkd: str, tube: str, job_ids: list[int]) -> None:
        c = buried_table.c
        with self.database.transaction() as conn:
            for page in pages(job_ids):
                conn.execute(buried_table.delete().where(c.beanstalkd == beanstalkd, c.tube == tube,
                                                         c.job_id.in_(page)))

    def set_pause(self, tube: str, until: dt.datetime, by: str) -> None:
        c = tube_table.c
        with self.database.transaction() as conn:
            conn.execute(tube_table.delete().where(c.name == tube))
            conn.execute(tube_table.insert().values(name=tube, paused_until=until, paused_by=by, paused_at=utc_now()))

    def clear_pause(self, tube: str) -> bool:
        """Resume a tube; False when it was not paused (or its pause had run out)."""
        c = tube_table.c
        with self.database.transaction() as conn:
            paused = conn.execute(sa.select(c.name).where(c.name == tube, c.paused_until > utc_now())).first()
            conn.execute(tube_table.delete().where(c.name == tube))
        return paused is not None

    def paused_tubes(self, now: dt.datetime) -> dict[str, dt.datetime]:
        """Tube -> the end of its pause, for the tubes paused now."""
        c = tube_table.c
        with self.database.transaction() as conn:
            return {name: until for name, until in
                    conn.execute(sa.select(c.name, c.paused_until).where(c.paused_until > now))}

    def replace_pool(self, host: str, tender_pid: int, rows: list[WorkerRow]) -> None:
        """Replace what this tender reported before with `rows` (one transaction)."""
        c = worker_table.c
        with self.database.transaction() as conn:
            conn.execute(worker_table.delete().where(c.host == host, c.tender_pid == tender_pid))
            if rows:
                conn.execute(worker_table.insert(), [dataclasses.asdict(row) for row in rows])

    def list_pool(self) -> list[WorkerRow]:
        c = worker_table.c
        query = sa.select(*[column for column in worker_table.c if column.name != "id"]) \
            .order_by(c.host, c.tubes, c.tender_pid, c.kind, c.pid)  # "tender" sorts before "worker"
        with self.database.transaction() as conn:
            return [WorkerRow(**dict(row)) for row in conn.execute(query).mappings()]
