"""The beanstalkd room: the only code in pheanq that speaks to beanstalkd.

`BeanstalkdConnection` (connection.py) is one connection to one server; `BeanstalkdServers` (servers.py) is every
server of the `beanstalkd` setting as one, which the rest of pheanq uses: one server, or several with jobs spread
over them (see docs/servers.rst).
"""

from __future__ import annotations

from pheanq.beanstalkd.connection import (
    BeanstalkdConnection,
    JobInfo,
    JobToPut,
    PutRefused,
    ReservedJob,
    ServerIdentity,
)
from pheanq.beanstalkd.servers import BeanstalkdServers, ServerState, job_reference, server_number

__all__ = ["BeanstalkdConnection", "BeanstalkdServers", "JobInfo", "JobToPut", "PutRefused", "ReservedJob",
           "ServerIdentity", "ServerState", "job_reference", "server_number"]
