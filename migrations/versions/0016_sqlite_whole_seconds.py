"""SQLite: the count trigger's run and wait times no longer gain a second when a time's microseconds are .9995 or
more.

Revision 0014 took a duration's whole seconds from strftime('%s', time), and its microseconds from the text.
SQLite keeps a time in milliseconds, so strftime rounds 'HH:MM:51.999700' up to :52, and the duration came out one
second long (a run from .2 to .9997 of a second was 1.7997 s). The whole seconds now come from the time's first 19
characters, without its fraction. Only SQLite's update trigger is made again; PostgreSQL and MariaDB/MySQL compute
durations with their own interval arithmetic and are left as they are. Durations already totalled stay as counted.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# As revision 0014's: the moves that end an attempt with a verdict, and the change rows' columns.
_RUN_ENDS = ("(OLD.status = 'working' AND NEW.status IN ('done', 'failed', 'cancelled', 'retrying')) OR "
             "(OLD.status = 'stalled' AND NEW.status IN ('done', 'failed', 'retrying'))")
_COLUMNS = "(tube, status, n, command, run_seconds, wait_seconds)"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _replace_update_trigger("substr({time}, 1, 19)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _replace_update_trigger("{time}")


def _replace_update_trigger(whole: str) -> None:
    """SQLite's update trigger of revision 0014, its whole seconds taken by strftime from `whole` of each time."""
    def seconds(later: str, earlier: str) -> str:
        return (f"max(0, (strftime('%s', {whole.format(time=later)}) - strftime('%s', {whole.format(time=earlier)}))"
                f" + (substr({later}, 21, 6) - substr({earlier}, 21, 6)) / 1000000.0)")

    run = seconds("COALESCE(NEW.finished, NEW.modified)", "NEW.started")
    wait = seconds("NEW.started", "max(OLD.modified, COALESCE(OLD.run_at, OLD.modified))")
    entered = (f"CASE WHEN OLD.status <> NEW.status THEN NEW.command END, "
               f"CASE WHEN NEW.started IS NOT NULL AND ({_RUN_ENDS}) THEN {run} END, "
               f"CASE WHEN NEW.started IS NOT NULL AND NEW.status = 'working' AND OLD.status <> 'working' "
               f"THEN {wait} END")
    op.execute("DROP TRIGGER pheanq_count_update")
    op.execute(f"CREATE TRIGGER pheanq_count_update AFTER UPDATE ON pheanq_task FOR EACH ROW "
               f"WHEN OLD.status <> NEW.status OR OLD.tube <> NEW.tube "
               f"BEGIN INSERT INTO pheanq_count_change {_COLUMNS} VALUES (OLD.tube, OLD.status, -1, NULL, NULL, NULL), "
               f"(NEW.tube, NEW.status, 1, {entered}); END")
