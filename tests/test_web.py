"""`pheanq web` over HTTP, a real server process on each database: every page and its JSON twin, who may see
and who may act (login, bearer tokens, roles), CSRF and origin checks, the audit, the security headers, the
refusal to serve beyond loopback without users, and the app mounted under a prefix of another application.
(The same flows in a real browser: tests/test_web_browser.py.)"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import finish_next, pheanq, wait_for
from web_support import ADMIN_TOKEN, READER_TOKEN, WebServer

from pheanq import Status, TaskDescription
from pheanq.config import load_settings
from pheanq.producer.service import TaskQueueService
from pheanq.storage import Store

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
PAGES = ["/", "/tasks", "/tasks/{task}", "/batches", "/workers", "/tubes", "/buried", "/schedules", "/audit"]


@pytest.fixture
def start_web(tmp_path: Path) -> Iterator[Callable[..., WebServer]]:
    started: list[WebServer] = []

    def start(env: dict[str, str], **options: Any) -> WebServer:
        server = WebServer(env, tmp_path, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _login(server: WebServer, token: str) -> httpx.Client:
    """A client that logged in through the form, as a browser does: it holds the session and CSRF cookies."""
    client = server.client()
    page = client.get("/login")
    answer = client.post("/login", data={"token": token, "csrf": _csrf(page.text)})
    assert answer.status_code == 303, answer.text
    return client


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None, "no CSRF field on the page"
    return found[1]


def _audit(db_url: str) -> list[tuple[str, str, str]]:
    store = Store(db_url)
    try:
        return [(entry.actor, entry.action, entry.outcome) for entry in reversed(store.audit.recent(1000))]
    finally:
        store.close()


def test_every_page_answers_as_html_and_as_json_with_what_the_table_holds(
    db_url: str, make_service: MakeService, make_env: MakeEnv, start_web: Callable[..., WebServer],
) -> None:
    service = make_service(db_url)
    for n in range(3):
        service.queue_task(TaskDescription("invoice", [n]), tube="billing")
    failed = finish_next(service, "billing", Status.FAILED)
    done = finish_next(service, "billing", Status.DONE)
    env = make_env(db_url)
    with open(env["PHEANQ_CONFIG"], "a") as config:
        config.write('[limits.tubes.billing]\nconcurrency = 3\n')
    server = start_web(env)
    with server.client(READER_TOKEN) as client:
        assert 'data-scope="tube:billing" data-kind="concurrency"' in client.get("/").text
        for path in (page.format(task=failed) for page in PAGES):
            page = client.get(path)
            assert page.status_code == 200, (path, page.text[:500])
            assert page.headers["content-type"].startswith("text/html")
            api = client.get("/api" + path.rstrip("/"))
            assert api.status_code == 200, (path, api.text[:500])
            assert api.headers["content-type"] == "application/json"
        overview = client.get("/api").json()
        assert overview["tubes"]["billing"]["tasks"] == {**{status.value: 0 for status in Status},
                                                         "new": 1, "failed": 1, "done": 1}
        assert overview["tubes"]["billing"]["beanstalkd"]["current-jobs-ready"] == 1
        assert overview["limits"] == [{"scope": "tube:billing", "kind": "concurrency", "limit": 3, "in_use": 0,
                                       "waiting": 1}]
        listed = client.get("/api/tasks", params={"status": "failed", "tube": "billing"}).json()
        assert [task["id"] for task in listed["tasks"]] == [failed]
        shown = client.get(f"/api/tasks/{done}").json()
        assert shown["task"]["status"] == "done" and not shown["may_retry"] and shown["may_delete"]
        day = client.get("/api/activity", params={"window": "day", "tube": "billing"}).json()
        assert sum(day["done"]) == 1 and sum(day["failed"]) == 1 and len(day["times"]) == 96
        assert client.get("/api/tasks/999999").status_code == 404
        wrong = client.get("/api/tasks", params={"status": "lost"})
        assert wrong.status_code == 400 and wrong.json() == {
            "error": "status: 'lost' is not a status (one of " + ", ".join(s.value for s in Status) + ")"}


def test_a_visitor_must_log_in_and_a_wrong_token_is_refused_and_audited(
    sqlite_url: str, make_env: MakeEnv, start_web: Callable[..., WebServer],
) -> None:
    # Logins do not touch the task table: one database shows them.
    pheanq(["db", "upgrade"], make_env(sqlite_url), Path("."))
    server = start_web(make_env(sqlite_url))
    with server.client() as client:
        page = client.get("/tasks?status=failed")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/tasks%3Fstatus%3Dfailed"
        api = client.get("/api/tasks")
        assert api.status_code == 401 and api.headers["www-authenticate"] == "Bearer"
        login = client.get("/login")
        refused = client.post("/login", data={"token": "not-a-token-of-anyone", "csrf": _csrf(login.text)})
        assert refused.status_code == 401 and "wrong token" in refused.text
        forged = client.post("/login", data={"token": ADMIN_TOKEN, "csrf": "0" * 64})
        assert forged.status_code == 401 and "CSRF" in forged.text
        assert "pheanq_session" not in client.cookies
    with server.client(token="wrong-token-0123456789") as client:
        assert client.get("/api/tasks").status_code == 401
    reader = _login(server, READER_TOKEN)
    assert reader.get("/tasks").status_code == 200
    assert "rita (read)" in reader.get("/").text
    with server.client() as client:
        # Another site's link to the login form may not send the visitor on to another site.
        answer = _follow_login(client, "//evil.example/")
        assert answer.headers["location"] == "/"
    assert _audit(sqlite_url) == [("(unknown)", "login", "refused: wrong token"), ("rita", "login", "logged in"),
                                  ("alice", "login", "logged in")]


def _follow_login(client: httpx.Client, next_page: str) -> httpx.Response:
    login = client.get("/login", params={"next": next_page})
    return client.post("/login", params={"next": next_page}, data={"token": ADMIN_TOKEN, "csrf": _csrf(login.text)})


def test_only_an_admin_acts_and_every_action_is_audited(
    db_url: str, make_service: MakeService, make_env: MakeEnv, start_web: Callable[..., WebServer],
) -> None:
    service = make_service(db_url)
    queued = [service.queue_task(TaskDescription("invoice", [n]), tube="billing") for n in range(3)]
    server = start_web(make_env(db_url))
    with server.client(READER_TOKEN) as reader:
        refused = reader.post("/api/tasks/action", data={"action": "cancel", "scope": "chosen", "id": queued[0]})
        assert refused.status_code == 403 and "admin role" in refused.json()["error"]
    assert service.find_task(queued[0]).status is Status.NEW
    with server.client(ADMIN_TOKEN) as admin:
        answer = admin.post("/api/tasks/action", data={"action": "cancel", "scope": "chosen",
                                                       "id": [str(queued[0]), str(queued[1])]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"] == "cancelled 2 of 2 selected task(s)"
        assert [service.find_task(i).status for i in queued] == [Status.CANCELLED, Status.CANCELLED, Status.NEW]
        assert "--- cancelled by alice (pheanq web)" in (service.find_task(queued[0]).log or "")
        paused = admin.post("/api/tubes/pause", data={"tube": "billing", "seconds": "600"})
        assert paused.status_code == 200 and paused.json()["tube"] == "billing"
        assert admin.get("/api/tubes").json()["tubes"][0]["paused_until"] is not None
        assert admin.post("/api/tubes/resume", data={"tube": "billing"}).json()["was_paused"] is True
        bad = admin.post("/api/tubes/pause", data={"tube": "-bad", "seconds": "1"})
        assert bad.status_code == 400 and "not a beanstalkd tube name" in bad.json()["error"]
        deleted = admin.post("/api/tasks/action", data={"action": "delete", "scope": "filter", "tube": "billing"})
        assert deleted.json()["message"] == "deleted 2 of 3 selected task(s); skipped 1 that had not ended (or " \
                                            "that a running batch or a waiting task still counts)"
        assert admin.get(f"/api/tasks/{queued[0]}").status_code == 404
    audited = _audit(db_url)
    assert [(actor, action) for actor, action, _ in audited] == [
        ("alice", "tasks-cancel"), ("alice", "tube-pause"), ("alice", "tube-resume"), ("alice", "tasks-delete")]
    assert audited[0][2] == "cancelled 2 of 2 selected task(s)"


def test_an_action_without_the_form_s_csrf_token_or_from_another_origin_is_refused(
    sqlite_url: str, make_service: MakeService, make_env: MakeEnv, start_web: Callable[..., WebServer],
) -> None:
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("invoice", [1]))
    server = start_web(make_env(sqlite_url))
    admin = _login(server, ADMIN_TOKEN)
    page = admin.get(f"/tasks/{task_id}")
    token = _csrf(page.text)
    for data, headers in (({}, {}), ({"csrf": "f" * 64}, {}),
                          ({"csrf": token}, {"origin": "http://evil.example"})):
        answer = admin.post(f"/tasks/{task_id}/cancel", data=data, headers=headers)
        assert answer.status_code == 403, (data, headers)
        assert "refused" in answer.text
    # Another browser's cookie with this one's token: the token is bound to the cookie it was signed for.
    other = server.client()
    other.cookies.set("pheanq_session", admin.cookies["pheanq_session"])
    other.get("/")
    assert other.post(f"/tasks/{task_id}/cancel", data={"csrf": token}).status_code == 403
    assert service.find_task(task_id).status is Status.NEW
    done = admin.post(f"/tasks/{task_id}/cancel", data={"csrf": token}, headers={"origin": server.url})
    assert done.status_code == 303 and done.headers["location"].startswith(f"/tasks/{task_id}?note=")
    assert service.find_task(task_id).status is Status.CANCELLED
    shown = admin.get(done.headers["location"])
    assert 'id="note"' in shown.text and "cancelled" in shown.text
    # A note is shown only as the action signed it: a link from elsewhere cannot put words in the dashboard's mouth.
    forged = admin.get(done.headers["location"].replace("note=", "note=all%20tasks%20deleted%3B%20"))
    assert 'id="note"' not in forged.text and admin.get(f"/tasks/{task_id}?note=hello").text.count('id="note"') == 0


def test_every_answer_carries_the_security_headers(
    sqlite_url: str, make_env: MakeEnv, start_web: Callable[..., WebServer],
) -> None:
    pheanq(["db", "upgrade"], make_env(sqlite_url), Path("."))
    server = start_web(make_env(sqlite_url))
    with server.client(READER_TOKEN) as client:
        for path in ("/", "/api/tasks", "/static/pheanq.js", "/login", "/nowhere"):
            headers = client.get(path).headers
            policy = headers["content-security-policy"]
            assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
            assert "'unsafe-inline'" not in policy
            assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    with server.client(READER_TOKEN) as fresh:
        cookie = fresh.get("/").headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_without_users_it_serves_loopback_only_and_everyone_there_is_the_local_admin(
    sqlite_url: str, make_env: MakeEnv, start_web: Callable[..., WebServer], tmp_path: Path,
) -> None:
    env = make_env(sqlite_url)
    pheanq(["db", "upgrade"], env, tmp_path)
    for address in ("0.0.0.0:8089", "[::]:8089", "192.0.2.1:8089"):
        refused = pheanq(["web", "--bind", address], env, tmp_path, timeout=30)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1 and "refusing to serve the dashboard on" in refused.stderr
        assert "without users" in refused.stderr
    wrong = pheanq(["web", "--bind", "localhost"], env, tmp_path, timeout=30)
    assert wrong.returncode == 2 and "is not HOST:PORT" in wrong.stderr
    bad_users = pheanq(["web"], {**env, "PHEANQ_WEB_USERS": "bob:root:0123456789abcdefgh"}, tmp_path, timeout=30)
    assert bad_users.returncode == 2 and "web_users.bob: role 'root' is not one of read, admin" in bad_users.stderr
    server = start_web(env, users=None)
    with server.client() as client:
        assert "local (admin)" in client.get("/").text
        assert client.get("/login").status_code == 303


def test_the_dashboard_mounted_under_a_prefix_links_and_logs_in_under_it(
    sqlite_url: str, make_service: MakeService,
) -> None:
    import threading

    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from support import free_port

    from pheanq.web.app import create_app

    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("invoice", [1]))
    settings = load_settings({"database_url": sqlite_url, "beanstalkd": service.settings.beanstalkd_address,
                              "web_users": f"alice:admin:{ADMIN_TOKEN}"}, environ={})
    # Another application that mounts the dashboard, served by uvicorn in this process.
    outer = Starlette(routes=[Mount("/queue", app=create_app(settings))])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(outer, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 20, "the mounting application to start")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            answer = client.get("/queue/tasks")
            assert answer.status_code == 303
            assert answer.headers["location"].startswith("/queue/login?next=/queue/tasks")
            login = client.get("/queue/login")
            logged_in = client.post("/queue/login", data={"token": ADMIN_TOKEN, "csrf": _csrf(login.text)})
            assert logged_in.status_code == 303
            page = client.get("/queue/tasks")
            assert page.status_code == 200 and f'href="/queue/tasks/{task_id}"' in page.text
            assert 'src="/queue/static/htmx.min.js"' in page.text
            assert client.get("/queue/static/uPlot.iife.min.js").status_code == 200
            assert client.get("/tasks").status_code == 404
    finally:
        server.should_exit = True
        thread.join(10)


def test_tasks_in_pages_through_the_api_never_repeat_or_skip(
    db_url: str, make_service: MakeService, make_env: MakeEnv, start_web: Callable[..., WebServer],
) -> None:
    service = make_service(db_url)
    queued = service.queue_many([TaskDescription("invoice", [n]) for n in range(23)], tube="billing")
    server = start_web(make_env(db_url))
    seen: list[int] = []
    after: int | None = None
    with server.client(READER_TOKEN) as client:
        while True:
            page = client.get("/api/tasks", params={"tube": "billing", "limit": 10,
                                                    **({"after": after} if after else {})}).json()
            seen += [task["id"] for task in page["tasks"]]
            after = page["next_after"]
            if after is None:
                break
        assert seen == sorted(queued, reverse=True)
        html = client.get("/tasks", params={"tube": "billing", "limit": 10}).text
        assert f'after={seen[9]}" id="next-page"' in html


def test_the_workers_page_shows_each_tender_s_workers_with_their_memory(
    db_url: str, make_env: MakeEnv, start_web: Callable[..., WebServer], tmp_path: Path,
) -> None:
    from support import TenderProcess

    env = make_env(db_url)
    tender = TenderProcess(["--min-workers", "2", "--max-workers", "2"], env, tmp_path)
    try:
        server = start_web(env)
        with server.client(READER_TOKEN) as client:
            def reported() -> list[dict[str, object]] | None:
                tenders = client.get("/api/workers").json()["tenders"]
                ready = [t for t in tenders if t["pid"] == tender.pid and len(t["workers"]) == 2
                         and all(w["memory_mb"] for w in t["workers"])]
                return ready or None

            found = wait_for(reported, 30, "the tender's report of two workers with their memory")
            assert found[0]["stale"] is False
            assert all(5 < float(str(w["memory_mb"])) < 500 for w in found[0]["workers"])
            assert f'data-pid="{tender.pid}"' in client.get("/workers").text
    finally:
        tender.signal(15)
        tender.wait(30)


def test_metrics_are_served_with_the_dashboard_and_alone_to_a_user_s_token(
    db_url: str, make_service: MakeService, make_env: MakeEnv, start_web: Callable[..., WebServer],
    tmp_path: Path,
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    service = make_service(db_url)
    for n in range(3):
        service.queue_task(TaskDescription("invoice", [n]), tube="billing")
    finish_next(service, "billing", Status.DONE)
    finish_next(service, "billing", Status.DONE)
    finish_next(service, "billing", Status.FAILED)
    env = make_env(db_url)
    for server in (start_web(env), start_web(env, command="metrics")):
        with server.client() as anonymous:
            refused = anonymous.get("/metrics")
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        with server.client(READER_TOKEN) as prometheus:
            answer = prometheus.get("/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        families = {family.name: family for family in text_string_to_metric_families(answer.text)}
        totals = {(sample.labels["tube"], sample.labels["outcome"]): sample.value
                  for sample in families["pheanq_tasks"].samples
                  if sample.name == "pheanq_tasks_total" and sample.labels["task"] == "invoice"}
        assert totals[("billing", "done")] == 2 and totals[("billing", "failed")] == 1
    # Only the metrics: the dashboard's pages are not there.
    with server.client(ADMIN_TOKEN) as admin:
        assert admin.get("/tasks").status_code == 404 and admin.get("/api").status_code == 404
    alone = pheanq(["metrics", "--bind", "0.0.0.0:9464"], {k: v for k, v in env.items() if k != "PHEANQ_WEB_USERS"},
                   tmp_path, timeout=30)
    assert alone.returncode == 2 and "refusing to serve the metrics on 0.0.0.0" in alone.stderr
