"""The only code that writes a task's row together with its job.

Every change that must keep a task's row and its beanstalkd job in step is a method of `Dispatcher`:
putting the job of a recorded task and noting its id, sending again a task whose job is gone, sending
the tasks that a write released (dependants, batch callbacks), claiming a reserved job's task, ending an
attempt and deleting or releasing its job, cancelling, regenerating, and burying a job that must not run.
The order is always the row first (the truth), then the job; a job whose row write lost is deleted,
never left behind; a row whose job could not be put stays without one, and the reconciler sends it.

Other code reads the table and beanstalkd freely, and may run what touches only one of them (a lease's
heartbeat, a touch, a pause, a buried job's record), but never writes a task's row and its job together.
"""

from pheanq.dispatch.dispatcher import HELD_RECHECK_SECONDS, Dispatcher
from pheanq.dispatch.ends import AttemptEnds
from pheanq.dispatch.jobs import Attempt, PlannedJob, WorkPackage

__all__ = ["HELD_RECHECK_SECONDS", "Attempt", "AttemptEnds", "Dispatcher", "PlannedJob", "WorkPackage"]
