"""A real `pheanq web` process on a free loopback port, and a real headless Chromium (Debian's, driven through its
ChromeDriver by Selenium) for the dashboard's tests and scripts/screenshots."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from support import PheanqProcess, free_port, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Two users every dashboard test may log in as.
ADMIN_TOKEN = "admin-token-0123456789abcdef"
READER_TOKEN = "reader-token-0123456789abcdef"
USERS = f"alice:admin:{ADMIN_TOKEN},rita:read:{READER_TOKEN}"


class WebServer(PheanqProcess):
    """`pheanq web --bind 127.0.0.1:PORT` (or `pheanq metrics ...`), up once it answers."""

    def __init__(self, env: Mapping[str, str], cwd: Path, users: str | None = USERS, command: str = "web") -> None:
        self.port = free_port()
        environment = dict(env)
        if users is not None:
            environment["PHEANQ_WEB_USERS"] = users
        super().__init__(command, ["--bind", f"127.0.0.1:{self.port}"], environment, cwd)
        wait_for(self._answers, 20, f"pheanq web on port {self.port} (stderr: {self.stderr_lines[-5:]})")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client of this server; with `token`, each request carries it as a bearer token."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except Exception:
                self.process.kill()
                self.process.wait(10)

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"pheanq web exited with {self.process.returncode}: {self.stderr_lines[-5:]}")
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.5).close()
        except OSError:
            return False
        return True


def chromium(width: int = 1400, height: int = 1000) -> Any:
    """Debian's headless Chromium through its ChromeDriver, with the flags this closed network needs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", f"--window-size={width},{height}"):
        options.add_argument(flag)
    # Selenium Manager would look for a driver on the network: the path is given, and it is told to stay offline.
    os.environ.setdefault("SE_OFFLINE", "true")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
