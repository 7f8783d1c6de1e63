"""The numbers of the beanstalkd servers (pheanq_beanstalkd): what a job id recorded on a task says of its server.

A number is given once, to an address seen for the first time, and kept: a server taken out of the list keeps its
number, so the tasks whose jobs it held still name it. The first address ever numbered gets 0, which is the one
server of an installation with one (pheanq.beanstalkd): its job ids stay beanstalkd's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from pheanq.clock import utc_now
from pheanq.storage.engine import Database
from pheanq.storage.tables import beanstalkd_server_table

_c = beanstalkd_server_table.c
# Two processes numbering new servers at once both take the next free number; the second's insert fails on the
# key and tries again with what the first wrote.
_ATTEMPTS = 5


class ServerNumbers:
    def __init__(self, database: Database) -> None:
        self.database = database

    def number_servers(self, addresses: Sequence[str]) -> dict[str, int]:
        """Every numbered server (number by address), after numbering those of `addresses` not yet numbered, in
        their order."""
        for _ in range(_ATTEMPTS):
            numbers = self.numbers()
            missing = [address for address in addresses if address not in numbers]
            if not missing:
                return numbers
            try:
                with self.database.transaction() as conn:
                    start = max(numbers.values(), default=-1) + 1
                    now = utc_now()
                    conn.execute(beanstalkd_server_table.insert(),
                                 [{"number": start + n, "address": address, "added": now}
                                  for n, address in enumerate(missing)])
            except IntegrityError:
                continue
        return self.numbers()

    def numbers(self) -> dict[str, int]:
        with self.database.transaction() as conn:
            return {str(row.address): int(row.number)
                    for row in conn.execute(sa.select(_c.address, _c.number).order_by(_c.number))}
