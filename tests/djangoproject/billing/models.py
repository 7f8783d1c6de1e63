from __future__ import annotations

from django.db import models


class Invoice(models.Model):
    number = models.CharField(max_length=32)
    amount_cents = models.IntegerField()
    paid = models.BooleanField(default=False)
    paid_by_task = models.BigIntegerField(null=True)  # the pheanq task that marked it paid
