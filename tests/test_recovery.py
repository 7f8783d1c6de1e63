"""A tender settling the task of a worker that died (pheanq.tender.recovery), against a real beanstalkd and
real databases: the end is recorded on the row, and the job that goes with it is the one the row names at
that moment, even when the reconciler sent the task again in between."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support import claims

from pheanq import Status, TaskDescription
from pheanq.dispatch import WorkPackage
from pheanq.producer.service import TaskQueueService
from pheanq.tender.recovery import DeadAttempt, OrphanedTask, recover_task

MakeService = Callable[..., TaskQueueService]
TUBE = "recovery"


def claimed(service: TaskQueueService) -> WorkPackage:
    """A task claimed by `service` as a worker would."""
    task_id = service.queue_task(TaskDescription("work", ["1"]), tube=TUBE)
    package = claims(service).reserve_task(TUBE, timeout=5)
    assert package is not None and package.task_id == task_id
    return package


@pytest.mark.parametrize("exit_code", [0, 3])
def test_an_end_recorded_for_a_dead_worker_deletes_the_job_its_row_names_after_a_resend(
    db_url: str, make_service: MakeService, exit_code: int,
) -> None:
    holder = make_service(db_url)
    package = claimed(holder)
    holder.beanstalkd.close()  # the worker died: beanstalkd hands its reservation back
    # The tender's aftercare reads the row (working, under the first job); then, before it writes the end, the
    # reconciler finds the job gone and the lease stale: stalled, and sent again as a second job under the
    # same attempt, whose late result the row still takes.
    dead = DeadAttempt(package.job_id, holder.find_task(package.task_id))
    second_job = holder.dispatch.send_again(dead.row)
    assert second_job is not None and second_job != package.job_id

    entry = "--- attempt 1 on w: ended; its worker died, so its tender recorded the result\n"
    if exit_code == 0:
        assert holder.dispatch.ends.finish(dead, Status.DONE, 0, entry, reserved=False)
    else:
        assert holder.dispatch.ends.fail(dead, exit_code, entry, reserved=False) is Status.FAILED

    assert holder.find_task(package.task_id).status is (Status.DONE if exit_code == 0 else Status.FAILED)
    assert holder.beanstalkd.inspect(second_job) is None, "the job the row named was left behind"
    assert holder.beanstalkd.inspect(package.job_id) is not None, "a job the row no longer names was deleted"


def test_an_attempt_its_worker_recorded_itself_is_left_as_it_is(db_url: str, make_service: MakeService) -> None:
    holder = make_service(db_url)
    package = claimed(holder)
    assert claims(holder).mark_done(package, None)  # recorded, then the worker died before it said READY

    said = recover_task(holder.dispatch, OrphanedTask(package.task_id, holder.dispatch.worker_name, 1,
                                                      "worker 1 died (killed)"))

    assert said == "already settled (done)"
    assert holder.find_task(package.task_id).status is Status.DONE
