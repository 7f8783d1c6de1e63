"""What `pheanq status`, the dashboard and the metrics show of the beanstalkd servers: each tube's jobs added up over
the servers that answered, and each server's state and jobs.

With one server this is its figures, and an error when it does not answer, as always. With several (pheanq.beanstalkd),
a server that does not answer leaves the tubes' figures those of the others, and is shown down by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pheanq.beanstalkd.servers import added_up
from pheanq.dispatch import Dispatcher
from pheanq.errors import TubeUnavailable

# beanstalkd's states of a job, as stats-tube counts them (current-jobs-STATE).
JOB_STATES = ("ready", "reserved", "delayed", "buried")


@dataclasses.dataclass
class ServerFigures:
    address: str
    number: int | None
    up: bool
    reason: str
    listed: bool
    jobs: dict[str, int]        # by state, over the tubes asked about

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BeanstalkdFigures:
    tubes: dict[str, dict[str, Any] | None]     # stats-tube added up over the servers that answered; None: none did
    servers: list[ServerFigures]
    error: str | None                           # why a server (or every server) did not answer


def beanstalkd_figures(dispatch: Dispatcher, tubes: list[str]) -> BeanstalkdFigures:
    """Each tube's stats over the servers, and each server's state and jobs of those tubes."""
    beanstalkd = dispatch.beanstalkd
    states = beanstalkd.states()
    servers = {state.address: ServerFigures(state.address, state.number, state.up, state.reason, state.listed,
                                            dict.fromkeys(JOB_STATES, 0)) for state in states}
    figures: dict[str, dict[str, Any] | None] = {}
    errors: dict[str, str] = {state.address: state.reason for state in states if state.listed and not state.up}
    down = set(errors)
    for tube in tubes:
        answered: list[dict[str, Any]] = []
        # A server that did not answer just now is not asked again for each tube (each try could cost a timeout).
        for address, answer in beanstalkd.tube_stats_by_server(tube, skip=down).items():
            if isinstance(answer, TubeUnavailable):
                errors.setdefault(address, str(answer))
                down.add(address)
                continue
            stats = answer or {}
            answered.append(stats)
            for state in JOB_STATES:
                servers[address].jobs[state] += int(stats.get(f"current-jobs-{state}", 0))
        figures[tube] = added_up(answered) if answered else None
    for address, reason in errors.items():
        servers[address].up, servers[address].reason = False, reason
    error = "; ".join(errors.values()) or None
    return BeanstalkdFigures(figures, list(servers.values()), error)
