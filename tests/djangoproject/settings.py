"""Django settings of the test project. Its one database is pheanq's: the URL in PHEANQ_DATABASE_URL, or in
DJANGO_DATABASE_URL when a test gives Django another database than pheanq's."""

from __future__ import annotations

import importlib
import os
from typing import Any
from urllib.parse import unquote, urlsplit

SECRET_KEY = "pheanq-tests-only"
USE_TZ = True
INSTALLED_APPS = ["djangoproject.billing"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def database(url: str) -> dict[str, Any]:
    """Django's DATABASES entry for a database URL of the kind pheanq's settings take."""
    parts = urlsplit(url)
    kind = parts.scheme.partition("+")[0]
    if kind == "sqlite":
        # A pheanq worker writes to the same file: wait for its write lock as long as pheanq's own connections do.
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parts.path[1:], "OPTIONS": {"timeout": 30}}
    server = {"NAME": parts.path.lstrip("/"), "USER": unquote(parts.username or ""),
              "PASSWORD": unquote(parts.password or ""), "HOST": parts.hostname or "", "PORT": parts.port or ""}
    if kind in ("postgresql", "postgres"):
        return {"ENGINE": "django.db.backends.postgresql", **server}
    if kind in ("mysql", "mariadb"):
        # pheanq's MySQL driver is PyMySQL, and a connection lent to pheanq must be of its driver: Django's MySQL
        # backend imports MySQLdb, which PyMySQL stands in for.
        importlib.import_module("pymysql").install_as_MySQLdb()
        return {"ENGINE": "django.db.backends.mysql", **server}
    raise ValueError(f"no Django database for {url}")


DATABASES = {"default": database(os.environ.get("DJANGO_DATABASE_URL") or os.environ["PHEANQ_DATABASE_URL"])}
