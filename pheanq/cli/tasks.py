"""The commands on tasks: `pheanq add-example-task` (and its command), `cancel`, `regenerate-failed-task` and
`task-cleanup`."""

from __future__ import annotations

import sys

import click

from pheanq.cli.app import Context, cli, parse_ids, pass_context, use_tube_option
from pheanq.errors import InvalidInput, NotFound, WrongStatus
from pheanq.limits import MAX_ATTEMPTS, MAX_BEANSTALKD_SECONDS, MAX_PRIORITY, MAX_SECONDS
from pheanq.producer.example import ExampleTask, run_example
from pheanq.producer.options import DEFAULT_PRIORITY
from pheanq.retry import BACKOFFS, Retry, parse_exit_codes

# Above this many tasks, add-example-task draws a progress bar.
PROGRESS_BAR_FROM = 100


@cli.command("add-example-task")
@click.option("--total-tasks", type=click.IntRange(min=1), default=1, show_default=True, metavar="N")
@click.option("--wait", type=click.IntRange(min=0), default=1, show_default=True, metavar="SECONDS",
              help="How long each example task runs.")
@click.option("--message", default="hello world", show_default=True, help="What each example task prints.")
@click.option("--timeout", type=click.IntRange(min=1), metavar="SECONDS",
              help="Stop each task's command after this long; the attempt fails. [default: no limit]")
@click.option("--priority", type=click.IntRange(min=0, max=MAX_PRIORITY), default=DEFAULT_PRIORITY,
              show_default=True, metavar="N", help="beanstalkd priority: 0 is the most urgent.")
@click.option("--delay", type=click.IntRange(min=0, max=MAX_BEANSTALKD_SECONDS), default=0, show_default=True,
              metavar="SECONDS", help="Not to run before this many seconds from now.")
@click.option("--max-attempts", type=click.IntRange(min=1, max=MAX_ATTEMPTS), default=1, show_default=True,
              metavar="N", help="Run a failed task again, up to N attempts in all.")
@click.option("--backoff", type=click.Choice(BACKOFFS), default="exponential", show_default=True,
              help="How the wait between attempts grows.")
@click.option("--retry-delay", type=click.IntRange(min=0, max=MAX_SECONDS), default=10, show_default=True,
              metavar="SECONDS", help="The wait before the second attempt (doubling each time if exponential).")
@click.option("--retry-cap", type=click.IntRange(min=0, max=MAX_SECONDS), default=3600, show_default=True,
              metavar="SECONDS", help="The longest wait between attempts.")
@click.option("--non-retryable", metavar="CODE[,CODE...]", help="Exit codes that fail the task at once.")
@click.option("--after", metavar="ID[,ID...]", help="Wait until these tasks are done.")
@click.option("--unique-key", metavar="KEY", help="Queue nothing if a task with this key has not ended.")
@click.option("--batch", "batch_id", type=click.IntRange(min=1), metavar="ID", help="Join this open batch.")
@use_tube_option("Tube to queue into.")
@pass_context
def add_example_task(context: Context, total_tasks: int, wait: int, message: str, timeout: int | None,
                     priority: int, delay: int, max_attempts: int, backoff: str, retry_delay: int, retry_cap: int,
                     non_retryable: str | None, after: str | None, unique_key: str | None, batch_id: int | None,
                     use_tube: str | None) -> None:
    """Queue example tasks: a quick check that beanstalkd, the database and the workers are set up."""
    tube = context.tubes(use_tube)[0]
    service = context.service
    retry = Retry(max_attempts, backoff, retry_delay, retry_cap,  # type: ignore[arg-type]  # a BACKOFFS choice
                  non_retryable=parse_exit_codes(non_retryable) if non_retryable else frozenset())
    parents = parse_ids(after, "--after") if after else []
    ids: list[int] = []
    with click.progressbar(length=total_tasks, label="queueing", file=sys.stderr,
                           hidden=total_tasks < PROGRESS_BAR_FROM) as progress:
        for _ in range(total_tasks):
            ids.append(service.queue_task(ExampleTask(wait, message), tube=tube, priority=priority, delay=delay,
                                          timeout=timeout, retry=retry, after=parents, unique_key=unique_key,
                                          batch=batch_id))
            progress.update(1)
    unique = sorted(set(ids))  # with --unique-key, every call after the first returns the same task
    span = f"{unique[0]}" if len(unique) == 1 else f"{unique[0]}..{unique[-1]}"
    click.echo(f"queued {len(unique)} example task(s) into tube {tube}: id {span}")


@cli.command("example-task-worker")
@click.argument("wait", type=click.IntRange(min=0))
@click.option("--message", default="hello world", show_default=True, help="The message to print.")
def example_task_worker(wait: int, message: str) -> None:
    """The example task's command: a line, a dot a second for WAIT seconds, then the message."""
    run_example(wait, message, sys.stdout)


@cli.command("cancel")
@click.argument("task_ids", metavar="ID...", nargs=-1, required=True, type=click.IntRange(min=1))
@click.option("--by", metavar="NAME", help="Who cancels, for the task's log. [default: user@host]")
@pass_context
def cancel(context: Context, task_ids: tuple[int, ...], by: str | None) -> None:
    """Cancel tasks that have not ended: a queued one leaves its tube, a running one is stopped by its worker."""
    problems = 0
    for task_id in task_ids:
        try:
            result = context.service.cancel_task(task_id, by)
        except NotFound as error:
            click.echo(f"task {task_id}: not cancelled: {error}", err=True)
            problems += 1
            continue
        click.echo(result.message, err=not result.cancelled)
        problems += not result.cancelled
    if problems:
        sys.exit(1)


@cli.command("regenerate-failed-task")
@click.option("--id", "ids", required=True, metavar="ID[,ID...]", help="Failed task id(s), comma-separated.")
@use_tube_option("Accepted for compatibility; a task goes back to its own tube.")
@pass_context
def regenerate_failed_task(context: Context, ids: str, use_tube: str | None) -> None:
    """Put failed tasks back into their tube (status `restarted`)."""
    task_ids = parse_ids(ids)
    problems = 0
    for task_id in task_ids:
        try:
            job_id = context.service.regenerate_task(task_id)
        except (NotFound, WrongStatus, InvalidInput) as error:  # a problem of this task; others stop the command
            click.echo(f"task {task_id}: not regenerated: {error}", err=True)
            problems += 1
            continue
        click.echo(f"task {task_id}: restarted as job {job_id}")
    if problems:
        sys.exit(1)


@cli.command("task-cleanup")
@click.option("--period", type=click.IntRange(min=0), default=3600, show_default=True, metavar="SECONDS",
              help="Delete done tasks that finished more than this long ago.")
@pass_context
def task_cleanup(context: Context, period: int) -> None:
    """Delete old `done` tasks (failed ones are kept). Run it from cron."""
    deleted = context.service.clean_up_tasks(period)
    click.echo(f"deleted {deleted} done task(s) that finished more than {period}s ago")

