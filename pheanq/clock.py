"""The one clock pheanq stores and compares times with: naive UTC, the same on every database backend."""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
