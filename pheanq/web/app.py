"""The dashboard as an ASGI application: `create_app(settings)` for `pheanq web` to serve, or for an existing
application to mount (`Mount("/queue", app=create_app())` in Starlette, `app.mount(...)` in FastAPI, or through
an ASGI-to-WSGI bridge).

Every page is also JSON under `/api` and the same path; every action is a POST under both. The headers of every
answer forbid framing, inline scripts and styles, and sniffing (a content security policy of 'self' only).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pheanq.clock import utc_now
from pheanq.config import Settings, load_settings
from pheanq.ops.report import duration_text, utc_text
from pheanq.web import actions, metrics, pages
from pheanq.web.auth import CSRF_COOKIE, SESSION_COOKIE, SESSION_SECONDS, Visitor, new_csrf_cookie
from pheanq.web.guard import Backend, Context, Page, View, forged, form_lists, guarded, root_of

HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
                               "object-src 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

# (path, view, role, methods): each page or action, served as HTML (or a redirect) and under /api as JSON.
ROUTES: list[tuple[str, View, str, list[str]]] = [
    ("/", pages.overview, "read", ["GET"]),
    ("/activity", pages.activity_series, "read", ["GET"]),
    ("/tasks", pages.tasks, "read", ["GET"]),
    ("/tasks/action", actions.tasks_action, "admin", ["POST"]),
    ("/tasks/{task_id}", pages.task, "read", ["GET"]),
    ("/tasks/{task_id}/retry", actions.task_retry, "admin", ["POST"]),
    ("/tasks/{task_id}/cancel", actions.task_cancel, "admin", ["POST"]),
    ("/batches", pages.batches, "read", ["GET"]),
    ("/batches/{batch_id}", pages.batch, "read", ["GET"]),
    ("/batches/{batch_id}/cancel", actions.batch_cancel, "admin", ["POST"]),
    ("/workers", pages.workers, "read", ["GET"]),
    ("/tubes", pages.tubes, "read", ["GET"]),
    ("/tubes/pause", actions.tube_pause, "admin", ["POST"]),
    ("/tubes/resume", actions.tube_resume, "admin", ["POST"]),
    ("/buried", pages.buried, "read", ["GET"]),
    ("/buried/action", actions.buried_action, "admin", ["POST"]),
    ("/schedules", pages.schedules, "read", ["GET"]),
    ("/audit", pages.audit, "read", ["GET"]),
]

# Data for the pages' scripts, not pages: served under /api only.
API_ONLY = {"/activity"}


def create_app(settings: Settings | None = None) -> Starlette:
    """The dashboard for these settings (the usual flags > environment > pheanq.toml when None)."""
    settings = settings or load_settings()
    templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                   autoescape=True, undefined=jinja2.StrictUndefined)
    templates.filters["duration"] = lambda seconds: "-" if seconds is None else duration_text(seconds)
    templates.filters["json"] = lambda value: json.dumps(value, indent=2, default=str)
    templates.globals["query_without"] = _query_without

    def render(request: Request, context: Context, page: Page) -> str:
        csrf_cookie = request.scope.get("state", {}).get("csrf_cookie", "")
        return templates.get_template(page.template).render(
            **page.data, page=page.template.removesuffix(".html"), root=root_of(request),
            visitor=context.visitor, csrf=context.backend.gate.csrf_token(csrf_cookie),
            note=_signed_note(request, context), query=request.query_params, open_gate=context.backend.gate.open,
            now=utc_text(utc_now()))

    backend = Backend(settings, render)
    routes: list[BaseRoute] = []
    for path, view, role, methods in ROUTES:
        if path not in API_ONLY:
            routes.append(Route(path, guarded(view, role, as_json=False), methods=methods))
        routes.append(Route(f"/api{path}".rstrip("/") or "/api", guarded(view, role, as_json=True), methods=methods))
    routes += [
        Route("/metrics", guarded(metrics.metrics, "read", as_json=True), methods=["GET"]),
        Route("/login", _login, methods=["GET", "POST"]),
        Route("/logout", _logout, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return _app(routes, backend)


def create_metrics_app(settings: Settings | None = None) -> Starlette:
    """/metrics alone, for `pheanq metrics` on a host that does not run the dashboard: the same users and
    bearer tokens; no pages, no actions, no login form."""
    settings = settings or load_settings()
    backend = Backend(settings, lambda request, context, page: "")
    return _app([Route("/metrics", guarded(metrics.metrics, "read", as_json=True), methods=["GET"])], backend)


def _app(routes: list[BaseRoute], backend: Backend) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        backend.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.backend = backend
    app.add_middleware(_Headers)
    return app


async def _login(request: Request) -> Response:
    """The login form (GET), and a token traded for a session cookie (POST, CSRF-checked). Each try is audited."""
    backend: Backend = request.app.state.backend
    root = root_of(request)
    next_page = _local_path(request.query_params.get("next"), root)
    if backend.gate.open:
        return RedirectResponse(next_page, 303)
    why = None
    if request.method == "POST":
        form = form_lists(await request.form())
        token = form.get("token", [None])[-1]
        why = forged(request, backend.gate, form)
        if why is None:
            visitor = backend.gate.by_token(token) if token is not None else None
            if visitor is not None:
                backend.store.audit.record(utc_now(), visitor.name, visitor.role, "login", "dashboard", "logged in")
                answer = RedirectResponse(next_page, 303)
                answer.set_cookie(SESSION_COOKIE, backend.gate.session_cookie(visitor), max_age=SESSION_SECONDS,
                                  path=root or "/", httponly=True, samesite="strict",
                                  secure=request.url.scheme == "https")
                return answer
            backend.store.audit.record(utc_now(), "(unknown)", "-", "login", "dashboard", "refused: wrong token")
            why = "wrong token"
    html = backend.render(request, Context(backend, Visitor("", "read"), {}), Page("login.html", {
        "why": why, "next": next_page}))
    return HTMLResponse(html, 401 if why else 200)


async def _logout(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    why = forged(request, backend.gate, form_lists(await request.form()))
    if why is not None:
        return HTMLResponse(why, 403)
    answer = RedirectResponse(f"{root_of(request)}/login", 303)
    answer.delete_cookie(SESSION_COOKIE, path=root_of(request) or "/")
    return answer


def _query_without(query: Any, name: str) -> str:
    """A page's query string less one parameter (the page cursor, to link the first or the next page), and less
    the note an action left (it told of that action, not of the next page)."""
    return urllib.parse.urlencode([(key, value) for key, value in query.multi_items()
                                   if key not in (name, "note", "noted")])


def _signed_note(request: Request, context: Context) -> str | None:
    """The note an action left in the address, if this dashboard signed it."""
    note, signature = request.query_params.get("note"), request.query_params.get("noted", "")
    if note is None or not hmac.compare_digest(signature, context.backend.gate.note_signature(note)):
        return None
    return note


def _local_path(target: str | None, root: str) -> str:
    """`next` if it is a path of this site (never another site's address: no open redirect), else the overview."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        parsed = urllib.parse.urlsplit(target)
        if not parsed.scheme and not parsed.netloc:
            return target
    return f"{root}/"


class _Headers:
    """Adds the security headers to every answer, and gives a browser without one its CSRF cookie (HttpOnly,
    SameSite=Strict), which the pages' forms are signed against."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie = Request(scope).cookies.get(CSRF_COOKIE)
        fresh = None
        if not cookie:
            cookie = fresh = new_csrf_cookie()
        scope.setdefault("state", {})["csrf_cookie"] = cookie
        root = str(scope.get("root_path", "")).rstrip("/") or "/"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]
                if fresh is not None:
                    headers.append((b"set-cookie", f"{CSRF_COOKIE}={fresh}; Path={root}; HttpOnly; "
                                                   f"SameSite=Strict".encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["create_app", "create_metrics_app"]
