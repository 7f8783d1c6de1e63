"""Who is asking, and may they: the dashboard's users and roles, its session cookie, and its CSRF tokens.

A user is a name, a role (`read` or `admin`) and a token from the settings (`[web.users.NAME]`). A browser logs in
once with its token and gets a session cookie; a script or Prometheus sends `Authorization: Bearer TOKEN` with
each request. With no users configured the dashboard serves loopback addresses only (pheanq.web.server refuses
any other), and everyone who reaches it there is the admin `local`.

Cookies and CSRF tokens are signed with HMAC-SHA256 under a key derived from the users' tokens, so every process
serving one configuration accepts what another signed, a restart keeps sessions, and changing any token ends them
all. Every action is a POST that carries a CSRF token bound to the session's cookie (the double-submit pattern,
signed); the cookies are HttpOnly and SameSite=Strict besides.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

from pheanq.config import WebUser

SESSION_COOKIE = "pheanq_session"
CSRF_COOKIE = "pheanq_csrf"
SESSION_SECONDS = 12 * 3600
LOCAL_USER = "local"


@dataclasses.dataclass(frozen=True)
class Visitor:
    name: str
    role: str

    @property
    def may_act(self) -> bool:
        return self.role == "admin"


class Gate:
    """The users of one configuration, and the signatures of their sessions and forms."""

    def __init__(self, users: Mapping[str, WebUser]) -> None:
        self.users = dict(users)
        material = b"\0".join(f"{name}\0{user.role}\0{user.token}".encode() for name, user in sorted(users.items()))
        # No users: sessions are not needed, but CSRF tokens still are; a key of this process's own will do.
        self._key = hashlib.sha256(b"pheanq-web\0" + material).digest() if users else secrets.token_bytes(32)

    @property
    def open(self) -> bool:
        """No users are configured: everyone (on loopback) is the admin `local`."""
        return not self.users

    def by_token(self, token: str) -> Visitor | None:
        """The user whose token this is (compared in constant time with every user's)."""
        found = None
        for name, user in self.users.items():
            if hmac.compare_digest(user.token.encode(), token.encode()):
                found = Visitor(name, user.role)
        return found

    def by_bearer(self, header: str | None) -> Visitor | None:
        if header is None or not header.lower().startswith("bearer "):
            return None
        return self.by_token(header[7:].strip())

    def session_cookie(self, visitor: Visitor, now: float | None = None) -> str:
        expires = int((now or time.time()) + SESSION_SECONDS)
        payload = base64.urlsafe_b64encode(f"{visitor.name}\0{visitor.role}\0{expires}".encode()).decode()
        return f"{payload}.{self._sign('session', payload)}"

    def by_session(self, cookie: str | None, now: float | None = None) -> Visitor | None:
        """The user a session cookie names, if its signature holds, it has not expired, and the user still
        exists with the same role."""
        if not cookie or "." not in cookie:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign("session", payload)):
            return None
        try:
            name, role, expires = base64.urlsafe_b64decode(payload.encode()).decode().split("\0")
            if int(expires) < (now or time.time()):
                return None
        except ValueError:
            return None
        user = self.users.get(name)
        return Visitor(name, role) if user is not None and user.role == role else None

    def csrf_token(self, csrf_cookie: str) -> str:
        """The token a form must carry when its browser holds `csrf_cookie`."""
        return self._sign("csrf", csrf_cookie)

    def csrf_holds(self, csrf_cookie: str | None, token: str | None) -> bool:
        return bool(csrf_cookie) and bool(token) and hmac.compare_digest(self._sign("csrf", csrf_cookie or ""),
                                                                         token or "")

    def note_signature(self, note: str) -> str:
        """The signature an action's one-line outcome carries in the address it redirects to: a page shows a
        note only with it, so a link from elsewhere cannot make the dashboard say what it did not do."""
        return self._sign("note", note)[:32]

    def _sign(self, purpose: str, text: str) -> str:
        return hmac.new(self._key, f"{purpose}\0{text}".encode(), hashlib.sha256).hexdigest()


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(24)
