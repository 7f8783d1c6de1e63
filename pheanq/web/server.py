"""`pheanq web` and `pheanq metrics`: the dashboard (or the metrics endpoint alone) served by uvicorn on an
address given as HOST:PORT, which is refused when it is not a loopback address and no user is configured: the
dashboard can cancel and delete tasks, and the metrics name every tube and task."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import uvicorn

from pheanq.config import Settings
from pheanq.errors import ConfigError
from pheanq.web.app import create_app, create_metrics_app

SHUTDOWN_SECONDS = 5


def bind_address(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets: [::1]:8080) as (host, port)."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--bind: {text!r} is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080)")
    return host.removeprefix("[").removesuffix("]"), int(port)


def check_exposure(host: str, settings: Settings, what: str) -> None:
    """Refuse to serve beyond this machine with no user configured."""
    if settings.web_users or is_loopback(host):
        return
    raise ConfigError(f"refusing to serve {what} on {host}, which is not a loopback address, without users: "
                      "configure [web.users.NAME] (role and token) in pheanq.toml or PHEANQ_WEB_USERS, or bind "
                      "127.0.0.1")


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (a name is looked up)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(str(address).split("%")[0]).is_loopback for address in found)


def serve(settings: Settings, address: str, metrics_only: bool = False,
          announce: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard (or, with `metrics_only`, /metrics alone) until SIGINT or SIGTERM; `announce` is told
    where, once the address is accepted."""
    host, port = bind_address(address)
    what = "the metrics" if metrics_only else "the dashboard"
    check_exposure(host, settings, what)
    app = create_metrics_app(settings) if metrics_only else create_app(settings)
    if announce is not None:
        announce(f"serving {what} on http://{address}/" + ("metrics" if metrics_only else ""))
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_SECONDS)
