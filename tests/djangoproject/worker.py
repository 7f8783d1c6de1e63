"""What a pheanq worker imports: `pheanq task-worker --import djangoproject.worker` (with DJANGO_SETTINGS_MODULE
set). Django is set up first, then the modules that define tasks are imported."""

from __future__ import annotations

import django

django.setup()

from django.db import connections  # noqa: E402  (after setup, as every module that uses models)

from djangoproject.billing import tasks  # noqa: E402, F401  (registers the billing tasks)
from djangoproject.billing.models import Invoice  # noqa: E402
from pheanq import on_worker_start  # noqa: E402

# A check at import that the database is migrated: it opens Django's connection in the worker process.
Invoice.objects.exists()


@on_worker_start
def close_django_connections() -> None:
    # The worker forks a child for its tasks after this hook. A connection opened at import (above) would be
    # inherited by every child: two processes on one socket garble each other's queries, and a child that
    # closed it would end the worker's session. Closed here, each child opens its own on its first query.
    connections.close_all()
