"""The storage room: the only code in pheanq that runs SQL.

`Store` is one database and the statements pheanq runs on it, grouped by what they are about: a task's
own life (`tasks`), a worker's claim of it and its lease (`claims`), what a task's end sets in motion
(`workflows`), the tasks a filter selects (`listings`) and the failed ones among them regenerated a page at a
time (`restarts`), everything that is not a task (`admin`), the dashboard's record of its actions
(`audit`), the places of the cluster-wide limits (`limit_places`), the recent activity its charts show
(`activity`), the slots of recurring schedules (`schedules`), and the numbers of the beanstalkd servers
(`servers`). Each statement that changes a task's status is
one compare-and-set UPDATE whose condition comes
from `pheanq.status.TRANSITIONS`, so two workers (or a worker and a person) can never both win a task.
"""

from __future__ import annotations

from pheanq.storage.activity import ActivityStatements
from pheanq.storage.admin import AdminStatements
from pheanq.storage.audit import AuditStatements
from pheanq.storage.claims import ClaimStatements
from pheanq.storage.engine import Database
from pheanq.storage.limit_places import LimitPlaces
from pheanq.storage.listings import ListingStatements, WorkflowListings
from pheanq.storage.removals import RemovalStatements
from pheanq.storage.restarts import RestartStatements
from pheanq.storage.schedules import ScheduleStatements
from pheanq.storage.servers import ServerNumbers
from pheanq.storage.tasks import TaskStatements
from pheanq.storage.workflows import WorkflowStatements


class Store:
    """pheanq's tables on SQLite, PostgreSQL or MySQL/MariaDB."""

    def __init__(self, url: str) -> None:
        self.database = Database(url)
        self.tasks = TaskStatements(self.database)
        self.limit_places = LimitPlaces(self.database)
        self.claims = ClaimStatements(self.database, self.limit_places)
        self.workflows = WorkflowStatements(self.database)
        self.admin = AdminStatements(self.database)
        self.listings = ListingStatements(self.database)
        self.restarts = RestartStatements(self.database)
        self.audit = AuditStatements(self.database)
        self.activity = ActivityStatements(self.database)
        self.workflow_listings = WorkflowListings(self.database)
        self.removals = RemovalStatements(self.database)
        self.schedules = ScheduleStatements(self.database)
        self.servers = ServerNumbers(self.database)

    @property
    def safe_url(self) -> str:
        return self.database.safe_url

    def close(self) -> None:
        self.database.close()
