"""The application scripts/bench-python runs on every queue: plain functions, the same for each system.

Nothing here imports pheanq, RQ or Celery (but celery_app.py, which only Celery's workers import): each
system calls the same function, which appends one line `KEY START END` (Unix times) to the file it is
given, so every system is measured by the same clock and the same write.
"""
