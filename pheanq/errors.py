"""Every error pheanq raises on purpose, in one tree; each one's message is one line a person can act on,
and `exit_code` is what the CLI exits with."""

from __future__ import annotations


class PheanqError(Exception):
    """Base of every error pheanq raises on purpose. `exit_code` is what the CLI exits with."""

    exit_code = 1


class InvalidInput(PheanqError, ValueError):
    """A value given by the caller (description, option, id, setting) is not acceptable."""

    exit_code = 2


class ConfigError(InvalidInput):
    """A setting is wrong: bad URL, unreadable toml, unknown key."""


class UnsafePath(InvalidInput):
    """A run directory or a file in it that another user could have planted or could write: not used."""


class MalformedBody(InvalidInput):
    """A job body that is not a pheanq job: a worker buries it, with this message as the reason."""


class SignatureError(MalformedBody):
    """A body that a worker with a secret must not run (see pheanq.body)."""


class Unsigned(SignatureError):
    """The body carries no signature at all."""


class WrongSignature(SignatureError):
    """The body carries a signature, but not a valid one for this secret."""


class NotFound(PheanqError, LookupError):
    """The task (or other thing) asked for does not exist."""


class WrongStatus(PheanqError):
    """The task is not in a status that allows what was asked."""


class SchemaMissing(PheanqError):
    """The database was never upgraded, or not to the schema this version of pheanq needs."""

    def __init__(self, url: str, missing: list[str] | None = None) -> None:
        what = "has no pheanq tables" if missing is None else f"lacks {', '.join(missing)}"
        super().__init__(f"the database {url} {what}: run `pheanq db upgrade`")


class StoreUnavailable(PheanqError):
    """The database cannot be reached right now."""


class TubeUnavailable(PheanqError):
    """beanstalkd cannot be reached right now."""


class TaskNotSent(TubeUnavailable):
    """The task row is recorded, but its job could not be put into beanstalkd (the reconciler sends it)."""

    def __init__(self, task_id: int, reason: str, status: str = "new") -> None:
        super().__init__(f"task {task_id} is recorded as {status} but not sent to beanstalkd yet ({reason}); "
                         "`pheanq reconcile` (run by every worker-tender) sends it when beanstalkd answers")
        self.task_id = task_id


class TenderRunning(PheanqError):
    """Another worker-tender already serves these tubes on this machine."""


class TaskPendingWarning(UserWarning):
    """queue_task recorded the task but could not put its job: it is pending, not lost.

    The reconciler (`pheanq reconcile`, run periodically by every worker-tender) sends it once
    beanstalkd answers. Turn it into an exception with
    ``warnings.simplefilter("error", pheanq.TaskPendingWarning)`` if the caller must know at once.
    """

    def __init__(self, task_id: int, reason: str) -> None:
        super().__init__(f"task {task_id} is recorded but pending: beanstalkd did not take its job ({reason}); "
                         "the reconciler will send it")
        self.task_id = task_id
