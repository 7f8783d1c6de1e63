"""The billing app's pheanq tasks. They use the ORM, so Django must be set up before this module is imported:
the application has done so by then, and a worker imports djangoproject.worker, which does it first."""

from __future__ import annotations

import os
from typing import Any

from djangoproject.billing.models import Invoice
from pheanq import current_task, task


@task
def pay_invoice(invoice_id: int) -> dict[str, Any]:
    # Raises Invoice.DoesNotExist (the task fails) if the invoice's transaction was not committed when this ran.
    invoice = Invoice.objects.get(pk=invoice_id)
    invoice.paid = True
    invoice.paid_by_task = current_task().task_id
    invoice.save(update_fields=["paid", "paid_by_task"])
    return {"invoice": invoice.pk, "number": invoice.number, "pid": os.getpid()}
