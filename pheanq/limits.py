"""The bounds pheanq checks values against, each in one place with the reason for its number, and the check
that names the value it refuses.

Most come from beanstalkd's protocol (protocol.txt) or from the columns of pheanq's tables; a value past
one is refused with `InvalidInput` before anything is written.
"""

from __future__ import annotations

from pheanq.errors import InvalidInput

# A task id (the table's BIGINT primary key): a signed 64-bit integer.
MAX_TASK_ID = 2**63 - 1
# beanstalkd's priority, and its seconds (a delay, a ttr, a pause-tube): unsigned 32-bit integers.
MAX_PRIORITY = MAX_BEANSTALKD_SECONDS = 2**32 - 1
# Every other span of seconds pheanq keeps (a task's timeout, a retry's delay and cap): a signed 32-bit
# integer, as the table's INTEGER holds.
MAX_SECONDS = 2**31 - 1
# beanstalkd's default max-job-size (-z); a larger job body would be refused by the server.
MAX_BODY_BYTES = 65535
# Digits of an int argument or option: Python's default int-to-text limit, which every worker reading a body has.
MAX_INT_DIGITS = 4300
# A unique key: the longest text MySQL/MariaDB can index in utf8mb4 (191 characters of 4 bytes: at most 767 bytes).
MAX_UNIQUE_KEY = 191
# A batch's name, who cancelled: the table's VARCHAR(255).
MAX_NAME = 255
MAX_ATTEMPTS = 1000
# What `pheanq_buried` keeps of a job a worker buried: the reason (characters) and the start of the body
# (bytes, kept as at most as many characters); and how many such records at most, the oldest dropped beyond
# that. Whatever floods a tube with junk, the table holds at most 1,000 records of at most 1,000 characters
# each (about 1 MB of text); a buried job whose record was dropped is still counted by `pheanq buried`.
BODY_PREVIEW_BYTES = 500
MAX_BURIED_REASON = 500
MAX_BURIED_RECORDS = 1000
# A Python task's stored result (bytes of JSON) and its progress message (characters): more is not stored.
MAX_RESULT_BYTES = 65536
MAX_PROGRESS_MESSAGE = 200
# A progress as its row keeps it (the `progress` column's size, characters of JSON), and its largest numbers.
MAX_PROGRESS_JSON = 600
MAX_PROGRESS_NUMBER = 2**63 - 1
# What a listing prints at once unless told otherwise (its --limit): one screenful or so.
LISTING_PAGE = 50
# The most a listing prints at once (`pheanq tasks --limit`): more is read with --after, page by page.
MAX_LISTING_PAGE = 1000
# The longest text `pheanq tasks --match` looks for.
MAX_MATCH_TEXT = 1000
# Rows one statement or one transaction takes at most: a batch's chunk, a page of cancels or of the
# reconciler, the ids in one IN (...) list.
PAGE_SIZE = 500


def check_whole_number(name: str, value: object, low: int, high: int) -> None:
    """InvalidInput naming `name` unless `value` is an int (not a bool) from `low` to `high`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be a whole number from {low} to {high}, not {value!r}")


def body_preview(body: bytes) -> str:
    """The start of a job's body as text that any database stores (undecodable bytes and NUL replaced)."""
    return body[:BODY_PREVIEW_BYTES].decode("utf-8", "replace").replace("\x00", "\ufffd")


def pages(items: list[int], size: int = PAGE_SIZE) -> list[list[int]]:
    """`items` cut into lists of at most `size`, in order."""
    return [items[start:start + size] for start in range(0, len(items), size)]
