"""A small Django project that queues pheanq tasks (tests/test_django.py): settings, one app, its tasks, the
module a pheanq worker imports, and the application side of each test scenario."""
