"""Retries with backoff: the policy's arithmetic (plain unit tests), then real workers and real commands:
a task that fails once and then succeeds, a task whose attempts run out, an exit code declared
non-retryable, a backoff delay that is waited out, and the log that keeps every attempt."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import TenderProcess, WorkerProcess, kill_worker_once_its_command_exited, pheanq, wait_for, write_config

from pheanq import InvalidInput, Retry, Status, TaskDescription
from pheanq.clock import utc_now
from pheanq.producer.service import TaskQueueService
from pheanq.retry import NextStep, after_failure, describe_retry, regenerated

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]

# The task's work: fail with exit code CODE (printing the attempt) until the file COUNTER holds TIMES
# failures, then succeed.
FLAKY = """
import sys
from pathlib import Path
counter, times, code = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
failures = int(counter.read_text()) if counter.exists() else 0
if failures < times:
    counter.write_text(str(failures + 1))
    print(f"failure {failures + 1}", flush=True)
    sys.exit(code)
print("it worked")
"""


@pytest.fixture
def flaky(tmp_path: Path) -> Callable[[int, int], TaskDescription]:
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    write_config(tmp_path, commands={"flaky": [sys.executable, str(script)]})

    def make(times: int, code: int = 3) -> TaskDescription:
        return TaskDescription("flaky", [str(tmp_path / f"counter-{times}-{code}"), times, code])

    return make


def test_exponential_backoff_doubles_from_the_delay_up_to_the_cap() -> None:
    policy = Retry(max_attempts=10, backoff="exponential", delay=2, cap=20, jitter=False)
    assert [policy.delay_after(n) for n in range(1, 7)] == [2, 4, 8, 16, 20, 20]
    assert Retry(max_attempts=3, backoff="fixed", delay=7, jitter=False).delay_after(5) == 7


def test_jitter_keeps_each_wait_in_the_upper_half_of_the_backoff() -> None:
    policy = Retry(max_attempts=5, delay=8, cap=100, jitter=True)
    assert policy.delay_after(2, lambda low, high: low) == 8
    assert policy.delay_after(2, lambda low, high: high) == 16
    assert {policy.delay_after(3) for _ in range(200)} <= set(range(16, 33))


def test_a_seeded_failure_always_leads_to_the_same_step_and_seeds_still_spread_the_jitter() -> None:
    """A worker that writes a failed attempt's end again (its first answer was lost) must write the same end:
    the seed (task, nonce, attempt) fixes the jitter; tasks failing together still retry apart."""
    policy = Retry(max_attempts=5, delay=64, jitter=True).to_json()
    assert len({after_failure(policy, 2, 1, seed="7:n:2") for _ in range(20)}) == 1
    assert len({after_failure(policy, 2, 1, seed=f"{task}:n:2").wait for task in range(50)}) > 5


def test_attempts_left_and_non_retryable_exit_codes_decide_the_next_step() -> None:
    policy = Retry(max_attempts=3, delay=0, non_retryable=frozenset({2})).to_json()
    assert after_failure(policy, 1, 1).wait == 0
    assert after_failure(policy, 3, 1).wait is None
    assert "attempts used up (attempt 3 of 3)" in after_failure(policy, 3, 1).note
    assert after_failure(policy, 1, 2).wait is None
    assert "exit code 2 is not retried" in after_failure(policy, 1, 2).note
    assert after_failure(policy, 1, None).wait == 0       # killed by a signal or timed out: retried
    assert after_failure(None, 1, 1) == after_failure(Retry().to_json(), 1, 1)
    assert after_failure(None, 1, 1).note == ""


def test_the_policy_survives_the_row_as_json() -> None:
    policy = Retry(max_attempts=4, backoff="fixed", delay=3, cap=9, jitter=False, non_retryable=frozenset({2, 5}))
    assert Retry.from_json(policy.to_json()) == policy
    assert Retry().to_json() is None and Retry.from_json(None) == Retry()


@pytest.mark.parametrize(("values", "message"), [
    ({"max_attempts": 0}, "max_attempts must be a whole number from 1 to 1000"),
    ({"backoff": "linear"}, "backoff must be one of fixed, exponential"),
    ({"delay": -1}, "retry delay must be a whole number"),
    ({"delay": 1.5}, "retry delay must be a whole number"),
    ({"non_retryable": frozenset({0})}, "a non-retryable exit code must be a whole number from 1 to 255"),
])
def test_a_bad_policy_is_refused_with_a_message_naming_the_value(values: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Retry(**values)  # type: ignore[arg-type]


def test_a_task_that_fails_once_is_retried_and_ends_done_with_both_attempts_in_its_log(
    db_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    flaky: Callable[[int], TaskDescription],
) -> None:
    service = make_service(db_url)
    task_id = service.queue_task(flaky(1), retry=Retry(max_attempts=3, delay=0))
    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait(30) == 0, worker.log
    row = service.find_task(task_id)
    assert (row.status, row.attempts, row.exit_code) == (Status.DONE, 2, 0), row.log
    assert row.log is not None
    assert "--- attempt 1 on" in row.log and "failed" in row.log and "exit code 3" in row.log
    assert "failure 1" in row.log                        # the failed attempt's output tail is kept
    assert "--- retrying in 0s (attempt 2 of 3)" in row.log
    assert "--- attempt 2 on" in row.log
    assert row.log.index("attempt 1 on") < row.log.index("retrying") < row.log.index("attempt 2 on")


def test_a_task_whose_attempts_run_out_ends_failed_with_every_attempt_logged(
    db_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    flaky: Callable[[int], TaskDescription],
) -> None:
    service = make_service(db_url)
    task_id = service.queue_task(flaky(10), retry=Retry(max_attempts=3, backoff="fixed", delay=0))
    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait(30) == 0, worker.log
    row = service.find_task(task_id)
    assert (row.status, row.attempts, row.exit_code) == (Status.FAILED, 3, 3), row.log
    assert row.log is not None
    assert [f"failure {n}" in row.log for n in (1, 2, 3)] == [True, True, True]
    assert row.log.count("--- retrying in") == 2
    assert "--- not retried: attempts used up (attempt 3 of 3)" in row.log


def test_a_non_retryable_exit_code_fails_the_task_at_once(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    flaky: Callable[..., TaskDescription],
) -> None:
    service = make_service(sqlite_url)
    task_id = service.queue_task(flaky(10, 2), retry=Retry(max_attempts=5, delay=0, non_retryable=frozenset({2})))
    worker = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert worker.wait(30) == 0, worker.log
    row = service.find_task(task_id)
    assert (row.status, row.attempts, row.exit_code) == (Status.FAILED, 1, 2), row.log
    assert row.log is not None and "--- not retried: exit code 2 is not retried (attempt 1 of 5)" in row.log


def test_a_retrying_task_waits_out_its_backoff_in_beanstalkd_then_runs_again(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    flaky: Callable[[int], TaskDescription],
) -> None:
    service = make_service(sqlite_url)
    task_id = service.queue_task(flaky(1), retry=Retry(max_attempts=2, backoff="fixed", delay=3, jitter=False))
    worker = start_worker([], make_env(sqlite_url))
    wait_for(lambda: service.status_of(task_id) is Status.RETRYING, 20, "the first attempt to fail")
    failed_at = utc_now()
    row = service.find_task(task_id)
    assert row.run_at is not None and 2.0 <= (row.run_at - failed_at).total_seconds() <= 3.5
    assert row.job_id is not None
    job = service.beanstalkd.inspect(row.job_id)
    assert job is not None and job.state == "delayed", job     # released with the delay, not deleted or failed
    wait_for(lambda: service.status_of(task_id) is Status.DONE, 20, "the second attempt")
    row = service.find_task(task_id)
    assert row.started is not None and (row.started - failed_at).total_seconds() >= 2.0
    worker.stop()


def test_a_regenerate_gives_a_fresh_allowance_counted_from_the_next_attempt() -> None:
    policy = regenerated(Retry(max_attempts=2, backoff="fixed", delay=5, jitter=False).to_json(), 2)
    assert Retry.from_json(policy) == Retry(max_attempts=2, backoff="fixed", delay=5, jitter=False)
    assert after_failure(policy, 3, 1) == NextStep(5, "--- retrying in 5s (attempt 4 of 4)\n")
    assert after_failure(policy, 4, 1) == NextStep(None, "--- not retried: attempts used up (attempt 4 of 4)\n")
    assert describe_retry(policy).endswith("; regenerated: attempts 3 to 4")
    assert after_failure(regenerated(None, 1), 2, 1) == NextStep(None, "")   # one attempt: nothing to say


def test_a_regenerated_task_whose_retries_were_used_up_gets_its_attempts_again_and_says_so(
    db_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    flaky: Callable[[int], TaskDescription],
) -> None:
    service = make_service(db_url)
    task_id = service.queue_task(flaky(10), retry=Retry(max_attempts=2, backoff="fixed", delay=0))
    assert start_worker(["--stop-when-empty"], make_env(db_url)).wait(30) == 0
    assert (service.find_task(task_id).status, service.find_task(task_id).attempts) == (Status.FAILED, 2)
    service.regenerate_task(task_id)
    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait(30) == 0, worker.log
    row = service.find_task(task_id)
    assert (row.status, row.attempts, row.exit_code) == (Status.FAILED, 4, 3), row.log
    assert row.log is not None
    after = row.log[row.log.index("--- regenerated: attempts 3 to 4 may run"):]
    assert "--- attempt 3 on" in after and "--- attempt 4 on" in after
    assert "--- retrying in 0s (attempt 4 of 4)" in after
    assert "--- not retried: attempts used up (attempt 4 of 4)" in after
    assert " of 2)" not in after


def test_stop_when_empty_leaves_a_task_in_its_backoff_and_stop_when_drained_waits_for_it(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
    flaky: Callable[..., TaskDescription],
) -> None:
    service = make_service(sqlite_url)
    policy = Retry(max_attempts=2, backoff="fixed", delay=2, jitter=False)
    left = service.queue_task(flaky(1), retry=policy)
    empty = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert empty.wait(30) == 0, empty.log
    assert service.status_of(left) is Status.RETRYING     # as documented: its job is delayed, not ready
    own = service.queue_task(flaky(1, 4), retry=policy)   # fails under the draining worker, which waits for it
    drained = start_worker(["--stop-when-drained"], make_env(sqlite_url))
    assert drained.wait(30) == 0, drained.log
    assert [(service.find_task(task).status, service.find_task(task).attempts) for task in (left, own)] == \
        [(Status.DONE, 2), (Status.DONE, 2)]
    assert "no job of pheanq is ready or delayed; stopping (--stop-when-drained)" in drained.log


def test_add_example_task_takes_a_retry_policy_and_show_prints_it(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv, make_service: MakeService,
) -> None:
    env = make_env(sqlite_url)
    queued = pheanq(["add-example-task", "--max-attempts", "4", "--backoff", "fixed", "--retry-delay", "5",
                     "--non-retryable", "2,9"], env, tmp_path)
    assert queued.returncode == 0, queued.stderr
    task_id = int(queued.stdout.split("id ")[1])
    policy = Retry.from_json(make_service(sqlite_url).find_task(task_id).retry)
    assert policy == Retry(max_attempts=4, backoff="fixed", delay=5, non_retryable=frozenset({2, 9}))
    shown = pheanq(["show", str(task_id)], env, tmp_path)
    assert "retry        4 attempts, fixed backoff 5s with jitter; exit codes 2,9 are not retried" in shown.stdout
    bad = pheanq(["add-example-task", "--max-attempts", "2", "--non-retryable", "two"], env, tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "pheanq: error: exit codes must be whole numbers separated by commas, not 'two'"


# The task's work: on its first attempt, wait until the file GO exists, then fail with exit code 3; on the next,
# succeed. COUNTER marks that the first attempt began.
HELD_THEN_FAILS = """
import sys, time
from pathlib import Path
counter, go = Path(sys.argv[1]), Path(sys.argv[2])
if not counter.exists():
    counter.write_text("1")
    while not go.exists():
        time.sleep(0.02)  # the task's work
    sys.exit(3)
print("second attempt")
"""


def test_a_failed_attempt_whose_worker_died_before_recording_it_is_retried_by_its_tender(
    sqlite_url: str, tmp_path: Path, make_env: MakeEnv, make_service: MakeService,
) -> None:
    script = tmp_path / "held.py"
    script.write_text(HELD_THEN_FAILS)
    write_config(tmp_path, commands={"held": [sys.executable, str(script)]})
    service = make_service(sqlite_url)
    go = tmp_path / "go"
    task_id = service.queue_task(TaskDescription("held", [str(tmp_path / "counter"), str(go)]),
                                 retry=Retry(max_attempts=2, delay=0))
    env = {**make_env(sqlite_url), "PHEANQ_RUN_DIR": str(tmp_path / "run")}
    tender = TenderProcess(["--min-workers", "1", "--max-workers", "1", "--spare-workers", "0"], env, tmp_path)
    try:
        wait_for(lambda: (tmp_path / "counter").exists(), 20, "the first attempt to start")
        worker_pid = int(str(service.find_task(task_id).worker).rsplit(":", 1)[1])
        kill_worker_once_its_command_exited(sqlite_url, tender, worker_pid, 3, go)
        wait_for(lambda: service.status_of(task_id) is Status.DONE, 30, f"the retry; log:\n{tender.log[-3000:]}")
    finally:
        tender.stop()
    row = service.find_task(task_id)
    assert row.attempts == 2 and row.log is not None
    assert "failed: exit code 3; " in row.log and "so its tender recorded the result" in row.log, row.log
    assert "--- retrying in 0s (attempt 2 of 2)" in row.log and ": done after" in row.log, row.log
