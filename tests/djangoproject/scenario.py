"""The application side of tests/test_django.py, run as a Django process of its own per step (Django is set up
once per process, for the database of one test): `python -m djangoproject.scenario STEP [ARG]` prints one JSON
object. Its pheanq settings come from the environment (PHEANQ_DATABASE_URL, PHEANQ_BEANSTALKD)."""

from __future__ import annotations

import json
import sys
from typing import Any

import django
import greenstalk

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from djangoproject.billing.models import Invoice  # noqa: E402
from djangoproject.billing.tasks import pay_invoice  # noqa: E402
from pheanq import InvalidInput, queue_task  # noqa: E402
from pheanq.producer.service import default_service  # noqa: E402


class Abandoned(Exception):
    """What makes the application give its transaction up."""


def jobs_in_tube() -> int:
    """How many jobs the task's tube holds, by a plain beanstalkd client."""
    service = default_service()
    with greenstalk.Client(service.settings.beanstalkd_servers[0], encoding=None) as client:
        try:
            stats: dict[str, Any] = dict(client.stats_tube(service.settings.default_tube))
        except greenstalk.NotFoundError:
            return 0
    return sum(int(stats[f"current-jobs-{state}"]) for state in ("ready", "reserved", "delayed", "buried"))


def status_of(task_id: int) -> str | None:
    """The task's status as pheanq's own connection sees it (None: no row it can see)."""
    status = default_service().status_of(task_id)
    return None if status is None else status.value


def new_invoice(number: str) -> Invoice:
    invoice: Invoice = Invoice.objects.create(number=number, amount_cents=4200)
    return invoice


def step(name: str, argument: str | None) -> dict[str, Any]:
    if name == "migrate":
        call_command("migrate", verbosity=0)
        Invoice.objects.all().delete()  # a server database keeps the invoices of the tests before
        return {}
    if name == "queue-in-atomic":
        with transaction.atomic():
            invoice = new_invoice("INV-1")
            task_id = pay_invoice.options(django_db="default").queue(invoice.pk)
            # pheanq's own connection: the row is not committed yet, and no job is out.
            before = {"status_before_commit": status_of(task_id), "jobs_before_commit":
                      jobs_in_tube()}
        return {"invoice": invoice.pk, "task": task_id, **before, "jobs_after_commit": jobs_in_tube()}
    if name == "roll-back":
        queued = []
        try:
            with transaction.atomic():
                new_invoice("INV-2")
                queued.append(queue_task(pay_invoice.describe(1), django_db="default"))
                raise Abandoned
        except Abandoned:
            pass
        with transaction.atomic():
            kept = new_invoice("INV-3")
            try:
                with transaction.atomic():  # a savepoint: its task goes with it, the outer one stays
                    queued.append(pay_invoice.options(django_db="default").queue(kept.pk + 1000))
                    raise Abandoned
            except Abandoned:
                pass
            queued.append(pay_invoice.options(django_db="default").queue(kept.pk))
        numbers = list(Invoice.objects.order_by("pk").values_list("number", flat=True))
        return {"dropped": queued[:2], "kept": queued[2], "kept_invoice": kept.pk, "invoices": numbers}
    if name == "queue-in-autocommit":
        invoice = new_invoice("INV-4")
        task_id = pay_invoice.options(django_db="default", priority=5).queue(invoice.pk)
        return {"invoice": invoice.pk, "task": task_id, "in_atomic_block": connection.in_atomic_block,
                "status": status_of(task_id), "jobs": jobs_in_tube()}
    if name == "queue-on-another-database":
        try:
            pay_invoice.options(django_db="default").queue(1)
        except InvalidInput as refused:
            return {"refused": str(refused)}
        return {"refused": None}
    if name == "invoice":
        assert argument is not None
        invoice = Invoice.objects.get(pk=int(argument))
        return {"paid": invoice.paid, "paid_by_task": invoice.paid_by_task}
    raise SystemExit(f"unknown step {name!r}")


if __name__ == "__main__":
    print(json.dumps(step(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None), default=str))
