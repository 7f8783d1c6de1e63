"""The status table is the single statement of a task's life: which statuses a worker may claim, which are
final, and that no move leaves `done` or skips `working`."""

from __future__ import annotations

import pytest

from pheanq.status import CLAIMABLE, FAILURES, FINAL, PENDING, TRANSITIONS, Status, can_move, sources_of


def test_the_original_status_names_are_kept() -> None:
    assert {status.value for status in Status} >= {"new", "working", "done", "failed", "restarted", "stalled"}
    assert str(Status.DONE) == "done"
    assert Status("failed") is Status.FAILED


def test_a_worker_may_claim_new_restarted_stalled_and_retrying_tasks_only() -> None:
    assert {Status.NEW, Status.RESTARTED, Status.STALLED, Status.RETRYING} == CLAIMABLE
    assert Status.WAITING not in CLAIMABLE


def test_the_ends_are_final_and_everything_else_is_pending() -> None:
    assert {Status.DONE, Status.FAILED, Status.CANCELLED, Status.UPSTREAM_FAILED} == FINAL
    assert not CLAIMABLE & FINAL
    assert Status.WORKING not in CLAIMABLE | FINAL
    assert set(Status) - FINAL == PENDING
    assert {Status.FAILED, Status.UPSTREAM_FAILED} == FAILURES


def test_every_task_that_has_not_ended_can_be_cancelled_and_an_ended_one_cannot() -> None:
    assert sources_of(Status.CANCELLED) == PENDING
    assert not FINAL & sources_of(Status.CANCELLED)


def test_a_waiting_task_is_released_to_new_or_ends_upstream_failed_or_cancelled() -> None:
    assert {target for (source, target) in TRANSITIONS if source is Status.WAITING} == \
        {Status.NEW, Status.UPSTREAM_FAILED, Status.CANCELLED}
    assert sources_of(Status.UPSTREAM_FAILED) == {Status.WAITING}


def test_only_a_failed_attempt_moves_to_retrying_and_retrying_only_to_working_or_cancelled() -> None:
    assert sources_of(Status.RETRYING) == {Status.WORKING, Status.STALLED}
    assert {target for (source, target) in TRANSITIONS if source is Status.RETRYING} == \
        {Status.WORKING, Status.CANCELLED}


@pytest.mark.parametrize("target", list(Status))
def test_nothing_moves_out_of_done(target: Status) -> None:
    assert not can_move(Status.DONE, target)


def test_a_failed_task_only_moves_when_regenerated() -> None:
    assert {target for (source, target) in TRANSITIONS if source is Status.FAILED} == {Status.RESTARTED}
    assert sources_of(Status.RESTARTED) == {Status.FAILED}


def test_only_a_working_task_or_a_late_result_of_a_stalled_one_can_end_done_or_failed() -> None:
    assert sources_of(Status.DONE) == {Status.WORKING, Status.STALLED}
    assert sources_of(Status.FAILED) == {Status.WORKING, Status.STALLED}


def test_a_task_goes_back_to_new_only_from_working_or_is_released_from_waiting() -> None:
    assert sources_of(Status.NEW) == {Status.WORKING, Status.WAITING}


def test_only_a_working_task_stalls() -> None:
    assert sources_of(Status.STALLED) == {Status.WORKING}


def test_every_claimable_status_moves_to_working_and_a_takeover_stays_working() -> None:
    assert sources_of(Status.WORKING) == CLAIMABLE | {Status.WORKING}


def test_every_status_is_reachable_from_new_or_waiting() -> None:
    reached = {Status.NEW, Status.WAITING}  # a task is inserted `waiting` when it waits for others
    frontier = [Status.NEW, Status.WAITING]
    while frontier:
        source = frontier.pop()
        for (start, target) in TRANSITIONS:
            if start is source and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(Status)


def test_every_move_says_why_it_happens() -> None:
    assert TRANSITIONS
    for (source, target), reason in TRANSITIONS.items():
        assert isinstance(source, Status) and isinstance(target, Status)
        assert reason.strip(), (source, target)


def test_moves_not_in_the_table_are_refused() -> None:
    assert can_move(Status.NEW, Status.WORKING)
    assert not can_move(Status.NEW, Status.DONE)
    assert not can_move(Status.NEW, Status.FAILED)
    assert not can_move(Status.RESTARTED, Status.DONE)
    assert not can_move(Status.FAILED, Status.WORKING)
    assert not can_move(Status.FAILED, Status.NEW)
