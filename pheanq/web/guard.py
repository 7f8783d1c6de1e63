"""What every request of the dashboard goes through before its view runs, and how a view's answer reaches the
browser or the script: who asks (pheanq.web.auth) and whether their role may; for an action, its CSRF token and
its origin; the errors of the ops room as a page or as JSON, never a traceback; and the same view as HTML under
`/x` and as JSON under `/api/x`.

A view is a plain function of (Request, Context) run in a worker thread (its database and beanstalkd calls
block): a page returns a `Page` (its template and data), an action a `Done` (what it did, and where to look next).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from pheanq.clock import utc_now
from pheanq.config import Settings
from pheanq.errors import InvalidInput, NotFound, PheanqError
from pheanq.producer.service import TaskQueueService
from pheanq.storage import Store
from pheanq.web.auth import CSRF_COOKIE, LOCAL_USER, SESSION_COOKIE, Gate, Visitor

log = logging.getLogger("pheanq.web")


@dataclasses.dataclass(frozen=True)
class Page:
    template: str
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Done:
    """What an action did (one line for the person, `data` for a script) and the page to show next."""

    message: str
    next_page: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Context:
    """What a view works with: the configuration's services, who asks, and an action's form."""

    backend: Backend
    visitor: Visitor
    form: dict[str, list[str]]

    @property
    def service(self) -> TaskQueueService:
        return self.backend.service()

    def audit(self, action: str, target: str, outcome: str) -> None:
        self.backend.store.audit.record(utc_now(), self.visitor.name, self.visitor.role, action, target, outcome)

    def field(self, name: str, default: str | None = None) -> str | None:
        values = self.form.get(name)
        return values[-1] if values else default

    def fields(self, name: str) -> list[str]:
        return self.form.get(name, [])


class Backend:
    """One configuration's store, users and templates, and a task queue service per thread: a service holds a
    beanstalkd connection, which one thread at a time may use; the store's connection pool is shared."""

    def __init__(self, settings: Settings, render: Callable[[Request, Context, Page], str]) -> None:
        self.settings = settings
        self.store = Store(settings.database_url)
        self.gate = Gate(settings.web_users)
        self.render = render
        self._local = threading.local()
        self._services: list[TaskQueueService] = []
        self._lock = threading.Lock()

    def service(self) -> TaskQueueService:
        found: TaskQueueService | None = getattr(self._local, "service", None)
        if found is None:
            found = TaskQueueService(self.settings, self.store)
            self._local.service = found
            with self._lock:
                self._services.append(found)
        return found

    def visitor(self, request: Request) -> Visitor | None:
        if self.gate.open:
            return Visitor(LOCAL_USER, "admin")
        header = request.headers.get("authorization")
        if header is not None:
            return self.gate.by_bearer(header)
        return self.gate.by_session(request.cookies.get(SESSION_COOKIE))

    def close(self) -> None:
        with self._lock:
            for service in self._services:
                service.dispatch.beanstalkd.close()
                service.dispatch.job_ids.close()
            self._services.clear()
        self.store.close()


View = Callable[[Request, Context], Page | Done | Response]


def guarded(view: View, role: str, as_json: bool) -> Callable[[Request], Awaitable[Response]]:
    """`view` behind the gate: answered as JSON when `as_json`, else as a page (a `Done` as a redirect)."""

    async def endpoint(request: Request) -> Response:
        backend: Backend = request.app.state.backend
        visitor = backend.visitor(request)
        if visitor is None:
            if as_json or request.headers.get("authorization") is not None:
                return JSONResponse({"error": "not logged in: send Authorization: Bearer TOKEN"}, 401,
                                    headers={"WWW-Authenticate": "Bearer"})
            return RedirectResponse(f"{root_of(request)}/login?next={urllib.parse.quote(_back_to(request))}", 303)
        if role == "admin" and not visitor.may_act:
            return _refused(request, as_json, 403, f"{visitor.name} may only look ({visitor.role} role): this "
                                                   "needs the admin role")
        form: dict[str, list[str]] = {}
        if request.method == "POST":
            data = await request.form()
            form = form_lists(data)
            why = forged(request, backend.gate, form)
            if why is not None:
                return _refused(request, as_json, 403, why)
        context = Context(backend, visitor, form)
        try:
            answer = await run_in_threadpool(view, request, context)
        except NotFound as error:
            return _refused(request, as_json, 404, str(error))
        except (InvalidInput, PheanqError) as error:
            return _refused(request, as_json, 400, str(error))
        if isinstance(answer, Response):
            return answer
        if isinstance(answer, Done):
            if as_json:
                return JSONResponse({"message": answer.message, **answer.data})
            separator = "&" if "?" in answer.next_page else "?"
            return RedirectResponse(f"{root_of(request)}{answer.next_page}{separator}"
                                    f"note={urllib.parse.quote(answer.message)}"
                                    f"&noted={backend.gate.note_signature(answer.message)}", 303)
        if as_json:
            return JSONResponse(json.loads(json.dumps(answer.data, default=str)))
        html = await run_in_threadpool(backend.render, request, context, answer)
        return HTMLResponse(html)

    return endpoint


def _back_to(request: Request) -> str:
    """Where a visitor sent to log in goes back to: the page asked for; for an action (a POST, which a redirect
    cannot repeat), the page its form was on, when that page is this site's."""
    if request.method == "GET":
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")
    page = urllib.parse.urlsplit(request.headers.get("referer", ""))
    if page.netloc == request.url.netloc and page.path.startswith("/"):
        return page.path + (f"?{page.query}" if page.query else "")
    return f"{root_of(request)}/"


def forged(request: Request, gate: Gate, form: dict[str, list[str]]) -> str | None:
    """Why an action must be refused as possibly forged by another site (None: it may go on). A request with a
    bearer token is a script's: no browser adds that header by itself."""
    if request.headers.get("authorization") is not None:
        return None
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        expected = f"{request.url.scheme}://{request.url.netloc}"
        if origin != expected:
            return f"refused: the request came from {origin}, not from this dashboard ({expected})"
    token = form.get("csrf", [None])[-1] or request.headers.get("x-csrf-token")
    if not gate.csrf_holds(request.cookies.get(CSRF_COOKIE), token):
        return "refused: the form's CSRF token is missing or wrong (reload the page and try again)"
    return None


def _refused(request: Request, as_json: bool, code: int, why: str) -> Response:
    if as_json:
        return JSONResponse({"error": why}, code)
    backend: Backend = request.app.state.backend
    visitor = backend.visitor(request) or Visitor("", "read")
    html = backend.render(request, Context(backend, visitor, {}), Page("error.html", {"code": code, "why": why}))
    return HTMLResponse(html, code)


def form_lists(data: FormData) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in data.multi_items():
        if isinstance(value, str):
            found.setdefault(key, []).append(value)
    return found


def root_of(request: Request) -> str:
    """Where the dashboard is mounted ('' at the root of its own server)."""
    return str(request.scope.get("root_path", "")).rstrip("/")
