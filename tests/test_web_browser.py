"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium, against a real `pheanq web`,
real `pheanq task-worker` and `worker-tender` processes running a real command, a real beanstalkd and each
database.

What the person at the browser does is what the tests do: they type in the filter form, follow the paging
links, tick rows, press the buttons and answer the confirmation each asks. After each action the tests read the
state back from the table and from beanstalkd, not only from the page; and no page may leave an error in the
browser's console (a script error, a failed load, or a violation of the content security policy).

The flows whose SQL differs by database (filtering and keyset paging, bulk retry and cancel, pause, buried
records) run on each; logging in, roles and CSRF run on SQLite only (why: see "who may do what" below).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import signal
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import greenstalk
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver import Chrome as WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait
from support import Beanstalkd, TenderProcess, WorkerProcess, job_state, register_work_script, wait_for, write_config
from web_support import ADMIN_TOKEN, READER_TOKEN, WebServer, chromium

from pheanq import Status, TaskDescription
from pheanq.clock import utc_now
from pheanq.limits import LISTING_PAGE
from pheanq.producer.service import TaskQueueService
from pheanq.storage.audit import AuditEntry

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]

# The command `work CODE LABEL`: it notes its arguments in runs.txt and exits with CODE, until its cause is fixed
# (the file `fixed` beside runs.txt), as a task that failed for a bug does once the bug is fixed and it is retried.
EXIT_BY_ARGUMENT = """
import sys
from pathlib import Path
runs = Path(sys.argv[1])
with runs.open("a") as out:
    out.write(" ".join(sys.argv[2:]) + "\\n")
sys.exit(0 if runs.with_name("fixed").exists() else int(sys.argv[2]))
"""
PAGE_WAIT = 30  # seconds a page may take to come on a loaded 2-core machine
TASKS = "/tasks"  # the task list


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One Chromium for the module: starting one takes seconds; each test clears its cookies."""
    driver: WebDriver = chromium()
    yield driver
    driver.quit()


def console(driver: WebDriver) -> list[dict[str, Any]]:
    """What the browser's console took since the last call (each entry once)."""
    # Selenium leaves get_log unannotated.
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


class Dashboard:
    """The browser on one `pheanq web`: pages opened, forms submitted and confirmations answered as a person
    would, and each page's console checked for errors."""

    def __init__(self, driver: WebDriver, server: WebServer) -> None:
        self.driver = driver
        self.server = server

    # --- pages

    def open(self, path: str, status: int | None = None) -> None:
        """Open `path`; `status` is the HTTP error the page is expected to answer with (its only console entry)."""
        self.driver.get(self.server.url + path)
        self.check_console(status)

    def check_console(self, status: int | None = None) -> None:
        """No error in the console since the last check: Chromium logs a script error, a blocked inline script or
        style (the content security policy), and a failed load there. A page answered with `status` logs that
        status once, which is expected."""
        entries = [entry for entry in console(self.driver) if entry["level"] == "SEVERE"]
        if status is not None:
            expected = [entry for entry in entries if f"the server responded with a status of {status}"
                        in entry["message"]]
            assert len(expected) == 1, entries
            entries.remove(expected[0])
        assert entries == [], entries

    @property
    def path(self) -> str:
        """The current page's path and query, as a person would copy it from the address bar."""
        address = urllib.parse.urlsplit(self.driver.current_url)
        assert f"{address.scheme}://{address.netloc}" == self.server.url, self.driver.current_url
        return address.path + (f"?{address.query}" if address.query else "")

    @property
    def query(self) -> dict[str, list[str]]:
        """The current page's query parameters that have a value."""
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.driver.current_url).query)

    def find(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self, selector: str) -> str:
        return self.find(selector).text

    def note(self) -> str:
        """The one line that says what the last action did."""
        return self.text("#note")

    def task_ids(self) -> list[int]:
        """The ids of the task list's rows, top to bottom."""
        return [int(row.get_attribute("data-id") or "") for row in self.all("#task-list tbody tr[data-id]")]

    def buried_jobs(self) -> list[int]:
        return [int(row.get_attribute("data-job") or "") for row in self.all("#buried-list tbody tr[data-job]")]

    def audit(self) -> list[tuple[str, str, str, str, str]]:
        """The Audit page's entries, newest first: (who, role, action, on what, outcome)."""
        self.open("/audit")
        rows = []
        for row in self.all("#audit-list tbody tr"):
            cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            if len(cells) == 6:
                rows.append((cells[1], cells[2], cells[3], cells[4], cells[5]))
        return rows

    # --- acting

    def press(self, button: WebElement, confirm: str | None = None, status: int | None = None) -> None:
        """Press `button` (or follow a link) and wait for the page it leads to; `confirm`: the question the button
        asks first, which is answered yes. `status`: the HTTP error the next page is expected to answer with."""
        page = self.find("html")
        button.click()
        if confirm is not None:
            self.answer(confirm, yes=True)
        self.wait_for_next(page)
        self.check_console(status)

    def wait_for_next(self, page: WebElement) -> None:
        """Wait until the page whose `html` element is `page` has given way to the next, loaded and its scripts
        run."""
        WebDriverWait(self.driver, PAGE_WAIT).until(expected_conditions.staleness_of(page))
        WebDriverWait(self.driver, PAGE_WAIT).until(
            lambda driver: driver.execute_script("return document.readyState") == "complete")

    def answer(self, question: str, yes: bool) -> None:
        """Answer the `window.confirm` a button opened, after checking that it asks `question`."""
        alert = WebDriverWait(self.driver, PAGE_WAIT).until(expected_conditions.alert_is_present())
        assert alert.text == question
        if yes:
            alert.accept()
        else:
            alert.dismiss()

    def follow(self, selector: str) -> None:
        """Follow the link `selector` finds."""
        self.press(self.find(selector))

    def log_in(self, token: str, path: str = "/") -> None:
        """Open `path` as a visitor without cookies: the login page comes first, then `path` once logged in."""
        self.forget_cookies()
        self.open(path)
        assert (urllib.parse.urlsplit(self.path).path, self.query) == ("/login", {"next": [path]}), self.path
        self.find("#token").send_keys(token)
        self.press(self.find("#login"))
        assert self.path == path

    def log_out(self) -> None:
        self.press(self.find("header form[action$='/logout'] button"))
        assert self.path == "/login"

    def forget_cookies(self) -> None:
        """Every cookie of every port of 127.0.0.1 (a browser shares them between ports: each test's server has
        a port of its own, and its users' tokens are the same)."""
        self.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})

    def tick(self, task_ids: list[int]) -> None:
        for task_id in task_ids:
            self.find(f"#task-list tr[data-id='{task_id}'] input.tick").click()

    def bulk_button(self, action: str, scope: str) -> WebElement:
        return self.find(f"#bulk button[name=action][value={action}][data-scope={scope}]")

    def set_field(self, selector: str, value: str) -> None:
        field = self.find(selector)
        field.clear()
        field.send_keys(value)

    def leave(self) -> None:
        """A blank page, so that no poll of a page (the overview's counts and charts) reaches a stopped server;
        a question a failed test left open is dismissed first (the next test would find it)."""
        with contextlib.suppress(NoAlertPresentException):
            self.driver.switch_to.alert.dismiss()
        self.driver.get("about:blank")
        console(self.driver)


@dataclasses.dataclass
class Scene:
    """What a test works with: the service on its database, the environment of the pheanq processes it starts
    (the `work` command registered, writing to `runs`), its beanstalkd, and the browser on its `pheanq web`."""

    service: TaskQueueService
    env: dict[str, str]
    runs: Path
    beanstalkd: Beanstalkd
    start_worker: StartWorker
    dashboard: Dashboard

    def worker(self, *args: str) -> WorkerProcess:
        return self.start_worker(list(args), self.env)

    def fail(self, tasks: list[tuple[str, int, str]]) -> list[int]:
        """Queue `work CODE LABEL` in each (tube, CODE, LABEL) and run a real worker on those tubes until it has
        run them all: those of a non-zero CODE are `failed`, the others `done`."""
        ids = [self.service.queue_task(TaskDescription("work", [code, label]), tube=tube)
               for tube, code, label in tasks]
        worker = self.worker("--use-tube", ",".join(sorted({tube for tube, _, _ in tasks})), "--stop-when-drained")
        assert worker.wait(60) == 0, worker.log
        assert statuses(self.service, ids) == [Status.FAILED if code else Status.DONE for _, code, _ in tasks]
        return ids

    def wait_buried(self, count: int) -> None:
        """Wait until `count` jobs of the default tube are buried and why is recorded (a worker buries a job, then
        records why; the Buried page lists the recorded ones)."""
        wait_for(lambda: int(tube_figures(self.beanstalkd, "pheanq").get("current-jobs-buried", 0)) == count
                 and len(self.service.store.admin.list_buried(self.service.beanstalkd.server, "pheanq")) == count,
                 30, f"{count} buried job(s) with their reasons recorded")

    def fix(self) -> None:
        """What made the `work` tasks fail is fixed: run again, they succeed."""
        (self.runs.parent / "fixed").touch()


MakeScene = Callable[[str], Scene]


@pytest.fixture
def make_scene(browser: WebDriver, tmp_path: Path, beanstalkd: Beanstalkd, make_service: MakeService,
               make_env: MakeEnv, start_worker: StartWorker) -> Iterator[MakeScene]:
    """The scene on the database `url`, with `pheanq web` started (stopped at the end) and the browser on it
    without cookies."""
    opened: list[Dashboard] = []

    def make(url: str) -> Scene:
        runs = register_work_script(tmp_path, EXIT_BY_ARGUMENT)
        env = make_env(url)
        dashboard = Dashboard(browser, WebServer(env, tmp_path))
        opened.append(dashboard)
        dashboard.forget_cookies()
        console(browser)  # whatever an earlier test left there is not this test's
        return Scene(make_service(url), env, runs, beanstalkd, start_worker, dashboard)

    yield make
    for dashboard in opened:
        try:
            dashboard.leave()
        finally:
            dashboard.server.stop()


# --- the state behind the pages, read directly


def statuses(service: TaskQueueService, task_ids: list[int]) -> list[Status | None]:
    return [service.status_of(task_id) for task_id in task_ids]


def tube_figures(server: Beanstalkd, tube: str) -> dict[str, Any]:
    """beanstalkd's own stats of the tube (empty when it has none), read with a plain client."""
    with greenstalk.Client(server.address, encoding=None) as client:
        try:
            return dict(client.stats_tube(tube))
        except greenstalk.NotFoundError:
            return {}


def job_of(service: TaskQueueService, task_id: int) -> int:
    job_id = service.find_task(task_id).job_id
    assert job_id is not None
    return job_id


def audited(service: TaskQueueService) -> list[AuditEntry]:
    """pheanq_audit's entries, newest first."""
    return service.store.audit.recent(100)


# --- filtering and paging


def test_the_task_list_filters_by_status_tube_and_text_in_a_shareable_url_and_pages_by_id(
    db_url: str, make_scene: MakeScene,
) -> None:
    scene = make_scene(db_url)
    # Eight tasks the filter selects, and beside them one of each kind that only one of its words leaves out.
    ids = scene.fail([
        *[("billing", 1, f"invoice-{n}") for n in range(4)],
        ("billing", 0, "invoice-paid"),  # done: left out by the status
        ("mail", 1, "invoice-mailed"),  # another tube
        ("billing", 1, "refund-1"),  # other arguments
        *[("billing", 1, f"invoice-{n}") for n in range(4, 8)],
    ])
    selected = sorted([*ids[:4], *ids[7:]], reverse=True)  # newest first, as the list shows them

    dashboard = scene.dashboard
    dashboard.log_in(ADMIN_TOKEN, TASKS)
    assert set(dashboard.task_ids()) == set(ids)
    dashboard.find("#filters input[name=status][value=failed]").click()
    dashboard.set_field("#f-tube", "billing")
    dashboard.set_field("#f-match", "invoice")
    dashboard.set_field("#filters input[name=limit]", "3")
    dashboard.press(dashboard.find("#apply"))
    assert dashboard.query == {"status": ["failed"], "tube": ["billing"], "match": ["invoice"], "limit": ["3"]}
    assert dashboard.task_ids() == selected[:3]
    shared = dashboard.path

    # The filter lives in the address: a reload shows the same rows and the same form, ...
    dashboard.driver.refresh()
    dashboard.check_console()
    assert dashboard.task_ids() == selected[:3]
    assert dashboard.find("#filters input[name=status][value=failed]").is_selected()
    assert [dashboard.find(f"#f-{name}").get_attribute("value") for name in ("tube", "match")] == \
        ["billing", "invoice"]
    # ... and a colleague given the address sees the same selection, once logged in (here as the reader).
    dashboard.log_in(READER_TOKEN, shared)
    assert dashboard.text("#visitor") == "rita (read)"
    assert dashboard.task_ids() == selected[:3]

    # Keyset paging: each next page starts below the last id shown, keeps the filter, and repeats nothing.
    pages = [dashboard.task_ids()]
    assert dashboard.all("#first-page") == []
    while dashboard.all("#next-page"):
        dashboard.follow("#next-page")
        query = dashboard.query
        assert query.pop("after") == [str(pages[-1][-1])]
        assert query == {"status": ["failed"], "tube": ["billing"], "match": ["invoice"], "limit": ["3"]}
        assert dashboard.all("#first-page")
        pages.append(dashboard.task_ids())
    assert pages == [selected[:3], selected[3:6], selected[6:]]
    dashboard.follow("#first-page")
    assert dashboard.path == shared
    assert dashboard.task_ids() == selected[:3]


# --- bulk actions on tasks


def test_ticked_failed_tasks_and_every_one_a_filter_selects_are_retried_and_run_again(
    db_url: str, make_scene: MakeScene,
) -> None:
    scene = make_scene(db_url)
    service, dashboard, beanstalkd = scene.service, scene.dashboard, scene.beanstalkd
    *billing, mail = scene.fail([*[("billing", 1, f"invoice-{n}") for n in range(8)], ("mail", 1, "receipt")])
    scene.fix()
    dashboard.log_in(ADMIN_TOKEN, f"{TASKS}?status=failed&tube=billing&limit=3")
    newest = sorted(billing, reverse=True)
    assert dashboard.task_ids() == newest[:3]

    dashboard.tick(newest[1:3])
    dashboard.press(dashboard.bulk_button("retry", "chosen"), confirm="Retry the ticked failed tasks?")
    assert dashboard.note() == "regenerated 2 of 2 selected task(s) (now restarted, back in their tubes)"
    # Back on the same selection and page size, with the action's note and the signature that lets it be shown.
    query = dashboard.query
    assert len(query.pop("noted", [])) == 1
    assert query == {"status": ["failed"], "tube": ["billing"], "limit": ["3"], "note": [dashboard.note()]}
    assert statuses(service, newest) == [Status.FAILED, Status.RESTARTED, Status.RESTARTED, *[Status.FAILED] * 5]
    assert [job_state(beanstalkd, job_of(service, task_id)) for task_id in newest[1:3]] == ["ready", "ready"]

    # Everything the filter selects, not only the page: three rows shown, six failed tasks retried.
    dashboard.open(f"{TASKS}?status=failed&tube=billing&limit=3")
    assert len(dashboard.task_ids()) == 3 and dashboard.all("#next-page")
    dashboard.press(dashboard.bulk_button("retry", "filter"),
                    confirm="Retry EVERY failed task matching this filter (not only this page)?")
    assert dashboard.note() == "regenerated 6 of 6 selected task(s) (now restarted, back in their tubes)"
    assert dashboard.task_ids() == []
    assert statuses(service, billing) == [Status.RESTARTED] * 8
    assert service.status_of(mail) is Status.FAILED
    assert int(tube_figures(beanstalkd, "billing")["current-jobs-ready"]) == 8

    # Their jobs are real: a worker runs each again, and now they succeed.
    worker = scene.worker("--use-tube", "billing,mail", "--stop-when-drained")
    assert worker.wait(60) == 0, worker.log
    assert statuses(service, billing) == [Status.DONE] * 8
    assert service.status_of(mail) is Status.FAILED
    assert [(entry.actor, entry.role, entry.action) for entry in audited(service)[:2]] == \
        [("alice", "admin", "tasks-retry"), ("alice", "admin", "tasks-retry")]
    assert dashboard.audit()[:2] == [
        ("alice", "admin", "tasks-retry", "tasks matching status=failed&tube=billing",
         "regenerated 6 of 6 selected task(s) (now restarted, back in their tubes)"),
        ("alice", "admin", "tasks-retry", f"tasks {newest[2]},{newest[1]}",
         "regenerated 2 of 2 selected task(s) (now restarted, back in their tubes)"),
    ]


def test_ticked_tasks_and_every_one_a_filter_selects_are_cancelled_once_confirmed(
    db_url: str, make_scene: MakeScene,
) -> None:
    scene = make_scene(db_url)
    service, dashboard, beanstalkd = scene.service, scene.dashboard, scene.beanstalkd
    # No worker serves these tubes: the tasks wait as `new`, their jobs ready.
    later = [service.queue_task(TaskDescription("work", [0, f"later-{n}"]), tube="later") for n in range(6)]
    other = service.queue_task(TaskDescription("work", [0, "other"]), tube="other")
    dashboard.log_in(ADMIN_TOKEN, f"{TASKS}?tube=later")
    assert dashboard.task_ids() == later[::-1]

    # Answered no, the question leaves everything as it was (proved below: that task is still new after the next
    # two actions).
    dashboard.tick([later[0]])
    dashboard.bulk_button("cancel", "chosen").click()
    dashboard.answer("Cancel the ticked tasks?", yes=False)
    dashboard.tick([later[0], later[1]])  # untick the first, tick the second
    dashboard.press(dashboard.bulk_button("cancel", "chosen"), confirm="Cancel the ticked tasks?")
    assert dashboard.note() == "cancelled 1 of 1 selected task(s)"
    assert statuses(service, [*later, other]) == [Status.NEW, Status.CANCELLED, *[Status.NEW] * 5]
    assert job_state(beanstalkd, job_of(service, later[1])) is None  # its job is gone from the tube
    assert "--- cancelled by alice (pheanq web)" in (service.find_task(later[1]).log or "")

    # "Tick all" ticks the rows of the page, and only those.
    dashboard.open(f"{TASKS}?tube=later&limit=4")
    dashboard.find("#tick-all").click()
    assert [tick.is_selected() for tick in dashboard.all("#task-list input.tick")] == [True] * 4
    dashboard.press(dashboard.bulk_button("cancel", "chosen"), confirm="Cancel the ticked tasks?")
    assert dashboard.note() == "cancelled 4 of 4 selected task(s)"
    assert statuses(service, [*later, other]) == [Status.NEW, *[Status.CANCELLED] * 5, Status.NEW]

    dashboard.press(dashboard.bulk_button("cancel", "filter"),
                    confirm="Cancel EVERY task matching this filter (not only this page)?")
    assert dashboard.note() == "cancelled 1 of 6 selected task(s); skipped 5 that had ended"
    assert statuses(service, [*later, other]) == [Status.CANCELLED] * 6 + [Status.NEW]
    assert [job_state(beanstalkd, job_of(service, task_id)) for task_id in [*later, other]] == [None] * 6 + ["ready"]
    assert dashboard.audit()[:3] == [
        ("alice", "admin", "tasks-cancel", "tasks matching tube=later",
         "cancelled 1 of 6 selected task(s); skipped 5 that had ended"),
        ("alice", "admin", "tasks-cancel", "tasks " + ",".join(map(str, later[2:])),
         "cancelled 4 of 4 selected task(s)"),
        ("alice", "admin", "tasks-cancel", f"tasks {later[1]}", "cancelled 1 of 1 selected task(s)"),
    ]
    assert [(entry.actor, entry.action) for entry in audited(service)] == \
        [("alice", "tasks-cancel")] * 3 + [("alice", "login")]


def test_the_line_an_action_leaves_is_not_shown_again_on_the_next_page(
    sqlite_url: str, make_scene: MakeScene,
) -> None:
    scene = make_scene(sqlite_url)
    # A page and two tasks more: after the action, whose answer shows a page of the default size, the list has a
    # next page.
    later = [scene.service.queue_task(TaskDescription("work", [0, f"later-{n}"]), tube="later")
             for n in range(LISTING_PAGE + 2)]
    dashboard = scene.dashboard
    dashboard.log_in(ADMIN_TOKEN, f"{TASKS}?tube=later")
    dashboard.tick([later[-1]])
    dashboard.press(dashboard.bulk_button("cancel", "chosen"), confirm="Cancel the ticked tasks?")
    assert dashboard.note() == "cancelled 1 of 1 selected task(s)"
    dashboard.follow("#next-page")
    assert dashboard.task_ids() == later[1::-1]
    # Nothing was done on the way to this page: a line saying something was would mislead.
    assert dashboard.all("#note") == [], dashboard.note()


# --- tubes and buried jobs


def test_a_tube_paused_on_the_tubes_page_keeps_its_tasks_from_a_worker_until_it_is_resumed(
    db_url: str, make_scene: MakeScene,
) -> None:
    scene = make_scene(db_url)
    service, dashboard, beanstalkd = scene.service, scene.dashboard, scene.beanstalkd
    scene.worker("--use-tube", "mail,other")
    first = service.queue_task(TaskDescription("work", [0, "first"]), tube="mail")
    wait_for(lambda: service.status_of(first) is Status.DONE, 30, "the first task of mail")
    dashboard.log_in(ADMIN_TOKEN, "/tubes")
    row = "#tube-list tr[data-tube=mail]"
    assert dashboard.text(f"{row} .paused-state") == "no"

    dashboard.set_field(f"{row} input[name=seconds]", "3600")
    asked = utc_now()
    dashboard.press(dashboard.find(f"{row} button.pause"))
    [(tube, until)] = service.store.admin.paused_tubes(utc_now()).items()
    assert tube == "mail" and 3590 < (until - asked).total_seconds() < 3660, until
    assert dashboard.note().startswith("tube mail: paused until ")
    assert int(tube_figures(beanstalkd, "mail")["pause"]) > 0
    assert dashboard.text(f"{row} .paused-state").startswith("until ")
    assert dashboard.all(f"{row} button.pause") == [] and dashboard.all(f"{row} button.resume")
    # The worker serves both tubes, and beanstalkd hands out the older job first: had mail not been paused, its
    # task would have run before the other tube's.
    waiting = service.queue_task(TaskDescription("work", [0, "waiting"]), tube="mail")
    other = service.queue_task(TaskDescription("work", [0, "other"]), tube="other")
    wait_for(lambda: service.status_of(other) is Status.DONE, 30, "the other tube's task")
    assert service.status_of(waiting) is Status.NEW

    dashboard.press(dashboard.find(f"{row} button.resume"))
    assert dashboard.note() == "tube mail: resumed"
    assert service.store.admin.paused_tubes(utc_now()) == {}
    assert int(tube_figures(beanstalkd, "mail")["pause"]) == 0
    assert dashboard.text(f"{row} .paused-state") == "no"
    wait_for(lambda: service.status_of(waiting) is Status.DONE, 30, "the resumed tube's task")
    assert [entry[:4] for entry in dashboard.audit()[:2]] == [("alice", "admin", "tube-resume", "tube mail"),
                                                              ("alice", "admin", "tube-pause", "tube mail")]


def test_buried_jobs_are_kicked_and_deleted_from_the_buried_page(
    db_url: str, make_scene: MakeScene,
) -> None:
    scene = make_scene(db_url)
    service, dashboard, beanstalkd, runs = scene.service, scene.dashboard, scene.beanstalkd, scene.runs
    # `later` is a command no worker knows yet: the first worker buries each of its jobs, with the reason.
    later = [service.queue_task(TaskDescription("later", [0, f"later-{n}"])) for n in range(3)]
    jobs = [job_of(service, task_id) for task_id in later]
    unaware = scene.worker()
    scene.wait_buried(3)
    unaware.signal(signal.SIGTERM)
    assert unaware.wait(30) == 0, unaware.log
    work = [sys.executable, str(runs.parent / "task.py"), str(runs)]
    write_config(runs.parent, commands={"work": work, "later": work})
    scene.worker().wait_line("READY", 30)

    dashboard.log_in(ADMIN_TOKEN, "/buried")  # the first tube with buried jobs is shown
    assert dashboard.buried_jobs() == jobs
    assert all("command 'later' is not registered" in row.text for row in dashboard.all("#buried-list tbody tr"))
    dashboard.find(f"#buried-list tr[data-job='{jobs[0]}'] input.tick").click()
    dashboard.press(dashboard.find("#buried-form button[value=kick][data-scope=chosen]"),
                    confirm="Kick the ticked jobs (make them ready again)?")
    assert dashboard.note() == "tube pheanq: kicked 1 buried job(s)"
    assert int(tube_figures(beanstalkd, "pheanq")["current-jobs-buried"]) == 2
    assert dashboard.buried_jobs() == jobs[1:]
    # The kicked job is the task's own: the worker that knows the command now runs it, once.
    wait_for(lambda: service.status_of(later[0]) is Status.DONE, 30, "the kicked task")
    assert runs.read_text() == "0 later-0\n"
    assert [row.job_id for row in service.store.admin.list_buried(service.beanstalkd.server, "pheanq")] == jobs[1:]

    dashboard.press(dashboard.find("#buried-form button[value=delete][data-scope=all]"),
                    confirm="Delete EVERY buried job of pheanq?")
    assert dashboard.note() == "tube pheanq: deleted 2 buried job(s)"
    assert [job_state(beanstalkd, job_id) for job_id in jobs[1:]] == [None, None]
    assert int(tube_figures(beanstalkd, "pheanq")["current-jobs-buried"]) == 0
    assert service.store.admin.list_buried(service.beanstalkd.server, "pheanq") == []
    assert dashboard.buried_jobs() == [] and dashboard.text("#buried-list tbody") == "no buried job in pheanq"
    assert runs.read_text() == "0 later-0\n"
    assert dashboard.audit()[:2] == [
        ("alice", "admin", "buried-delete", "tube pheanq: all buried jobs", "tube pheanq: deleted 2 buried job(s)"),
        ("alice", "admin", "buried-kick", f"tube pheanq: jobs {jobs[0]}", "tube pheanq: kicked 1 buried job(s)"),
    ]


# --- who may do what
# These run on SQLite only: the login, the role and the CSRF token are checked by the web process before any query,
# and what they write (audit entries) is written by the same code as in the tests above, which run on each
# database.


@pytest.fixture
def start_tender(tmp_path: Path) -> Iterator[Callable[[Mapping[str, str], str], TenderProcess]]:
    """Start a `pheanq worker-tender` with one worker on `tubes`; stopped, with its workers, at the end."""
    started: list[TenderProcess] = []

    def start(env: Mapping[str, str], tubes: str) -> TenderProcess:
        tender = TenderProcess(["--use-tube", tubes, "--min-workers", "1", "--spare-workers", "0", "--max-workers",
                                "1"], {**env, "PHEANQ_RUN_DIR": str(tmp_path / "run")}, tmp_path)
        started.append(tender)
        return tender

    yield start
    for tender in started:
        tender.stop()


def forge(dashboard: Dashboard, action: str, fields: Mapping[str, str], status: int) -> str:
    """Post a form of the visitor's own making (not one the page offers) to `action`, the way a person who edits
    the page, or a script in it, would; returns the error the answer shows."""
    page = dashboard.find("html")
    dashboard.driver.execute_script("""
        var form = document.createElement("form");
        form.method = "post";
        form.action = arguments[0];
        for (var name in arguments[1]) {
            var field = document.createElement("input");
            field.type = "hidden"; field.name = name; field.value = arguments[1][name];
            form.appendChild(field);
        }
        document.body.appendChild(form);
        form.submit();
    """, dashboard.server.url + action, dict(fields))
    dashboard.wait_for_next(page)
    dashboard.check_console(status)
    return dashboard.text("#error")


def test_a_reader_sees_every_page_without_its_buttons_and_is_refused_what_the_admin_may_do(
    sqlite_url: str, make_scene: MakeScene, start_tender: Callable[[Mapping[str, str], str], TenderProcess],
) -> None:
    scene = make_scene(sqlite_url)
    service, dashboard, beanstalkd, runs = scene.service, scene.dashboard, scene.beanstalkd, scene.runs
    tender = start_tender(scene.env, "billing,pheanq")
    failed = service.queue_task(TaskDescription("work", [1, "invoice"]), tube="billing")
    batch = service.create_batch("nightly")
    in_batch = batch.add(TaskDescription("work", [0, "in-batch"]), tube="billing")
    batch.close()
    service.queue_task(TaskDescription("later", [0, "unknown"]))  # a command the worker does not know: buried
    wait_for(lambda: statuses(service, [failed, in_batch]) == [Status.FAILED, Status.DONE], 30,
             f"the tender's worker to run the tasks; log:\n{tender.log[-2000:]}")
    scene.wait_buried(1)

    # A wrong token is refused, and the login page stays.
    dashboard.open(TASKS)
    dashboard.find("#token").send_keys("not-a-token")
    dashboard.press(dashboard.find("#login"), status=401)
    assert dashboard.text("#error") == "wrong token"
    assert dashboard.query == {"next": [TASKS]} and dashboard.all("#token")

    dashboard.find("#token").send_keys(READER_TOKEN)
    dashboard.press(dashboard.find("#login"))
    assert dashboard.path == TASKS
    assert dashboard.text("#visitor") == "rita (read)"
    # Each page shows what it lists, and no button that acts (the log-out button is in the header, not in main).
    pages = {
        TASKS: f"#task-list tr[data-id='{failed}']",
        f"/tasks/{failed}": "#task-status.failed",
        "/batches": f"#batch-list tr[data-id='{batch.id}']",
        f"/batches/{batch.id}": "#batch-state.finished",
        "/workers": f".tender[data-pid='{tender.pid}']",
        "/tubes": "#tube-list tr[data-tube=billing]",
        "/buried": "#buried-list tr[data-job]",
        "/audit": "#audit-list tbody td:nth-child(6)",  # an entry (rita's login), not the "nothing done" row
    }
    for path, shown in pages.items():
        dashboard.open(path)
        assert dashboard.all(shown), path
        assert dashboard.all("main form[method=post] button, main input.tick, #tick-all") == [], path
    overview_charts_draw_and_counts_follow_the_table(dashboard, service)

    # The page's own CSRF token does not make a reader an admin: each action is refused, and nothing changes.
    dashboard.open(TASKS)
    token = dashboard.find("#bulk input[name=csrf]").get_attribute("value") or ""
    refusal = "rita may only look (read role): this needs the admin role"
    for action, fields in [
        ("/tasks/action", {"action": "retry", "scope": "chosen", "id": str(failed)}),
        (f"/tasks/{failed}/retry", {}),
        ("/tubes/pause", {"tube": "billing"}),
        ("/buried/action", {"action": "kick", "scope": "all", "tube": "pheanq"}),
    ]:
        assert forge(dashboard, action, {"csrf": token, **fields}, 403) == refusal, action
    assert service.status_of(failed) is Status.FAILED
    assert service.store.admin.paused_tubes(utc_now()) == {}
    assert int(tube_figures(beanstalkd, "pheanq")["current-jobs-buried"]) == 1
    assert runs.read_text().splitlines() == ["1 invoice", "0 in-batch"]

    # The admin: the same browser (the same CSRF cookie, so the same token), and the buttons are there.
    dashboard.log_out()
    dashboard.find("#token").send_keys(ADMIN_TOKEN)
    dashboard.press(dashboard.find("#login"))
    assert dashboard.text("#visitor") == "alice (admin)"
    for path in (TASKS, "/tubes", "/buried"):
        dashboard.open(path)
        assert dashboard.all("main form[method=post] button"), path
    dashboard.open(f"/tasks/{failed}")
    assert dashboard.find("form[action$='/retry'] input[name=csrf]").get_attribute("value") == token
    scene.fix()
    dashboard.press(dashboard.find("#retry"), confirm=f"Put task {failed} back into its tube?")
    assert dashboard.note() == f"task {failed}: restarted as job {job_of(service, failed)}"
    wait_for(lambda: service.status_of(failed) is Status.DONE, 30, "the retried task to run again")
    assert runs.read_text().splitlines() == ["1 invoice", "0 in-batch", "1 invoice"]
    assert [entry[:4] for entry in dashboard.audit()[:4]] == [
        ("alice", "admin", "task-retry", f"task {failed}"), ("alice", "admin", "login", "dashboard"),
        ("rita", "read", "login", "dashboard"), ("(unknown)", "-", "login", "dashboard")]
    assert [entry.action for entry in audited(service)] == ["task-retry", "login", "login", "login"]


def overview_charts_draw_and_counts_follow_the_table(dashboard: Dashboard, service: TaskQueueService) -> None:
    """The overview draws both charts from /api/activity, draws them again for another window, and its counts
    follow the table without a reload (htmx under the content security policy)."""
    dashboard.open("/")
    page = dashboard.find("html")
    WebDriverWait(dashboard.driver, PAGE_WAIT).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "body[data-charts=drawn]")))
    assert len(dashboard.all(".chart .uplot canvas")) == 2
    dashboard.driver.execute_script("document.body.removeAttribute('data-charts')")
    dashboard.find("#chart-window option[value=day]").click()
    WebDriverWait(dashboard.driver, PAGE_WAIT).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "body[data-charts=drawn]")))
    assert len(dashboard.all(".chart .uplot canvas")) == 2
    service.queue_task(TaskDescription("work", [0, "fresh"]), tube="fresh")
    WebDriverWait(dashboard.driver, PAGE_WAIT).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#counts tr[data-tube=fresh]")))
    assert dashboard.find("html") == page  # the same page: the counts came by themselves
    dashboard.check_console()


def test_an_action_taken_after_the_session_ended_leads_through_the_login_back_to_its_page_undone(
    sqlite_url: str, make_scene: MakeScene,
) -> None:
    scene = make_scene(sqlite_url)
    service, dashboard = scene.service, scene.dashboard
    [failed] = scene.fail([("billing", 1, "invoice")])
    dashboard.log_in(ADMIN_TOKEN, f"{TASKS}?status=failed")
    dashboard.tick([failed])
    # The session ends (after its 12 hours) while the page is open; then a button of the page is pressed.
    dashboard.driver.delete_cookie("pheanq_session")
    dashboard.press(dashboard.bulk_button("retry", "chosen"), confirm="Retry the ticked failed tasks?")
    assert urllib.parse.urlsplit(dashboard.path).path == "/login"
    dashboard.find("#token").send_keys(ADMIN_TOKEN)
    dashboard.press(dashboard.find("#login"))
    # Back on the page the button was on (the action's own address answers POST only), the action not done: it was
    # not done without a session, and a login does not replay it.
    assert dashboard.path == f"{TASKS}?status=failed"
    assert dashboard.all("#error") == [] and dashboard.task_ids() == [failed]
    assert service.status_of(failed) is Status.FAILED


@contextlib.contextmanager
def another_site(page: str) -> Iterator[str]:
    """A web server of another origin (127.0.0.1 on another port: the same site for the browser's cookies) that
    serves `page`; yields its address."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            body = page.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # the signature http.server calls
            pass  # the test's output is no place for its requests

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_an_action_with_a_wrong_or_missing_csrf_token_or_from_another_origin_is_refused_and_changes_nothing(
    sqlite_url: str, make_scene: MakeScene,
) -> None:
    scene = make_scene(sqlite_url)
    service, dashboard, beanstalkd = scene.service, scene.dashboard, scene.beanstalkd
    [failed] = scene.fail([("billing", 1, "invoice")])
    dashboard.log_in(ADMIN_TOKEN, f"{TASKS}?status=failed")
    forged = "refused: the form's CSRF token is missing or wrong (reload the page and try again)"

    def retry_ticked_after(change: Callable[[], object]) -> None:
        """Tick the failed task, `change` the page or the browser, and press retry: the answer is a 403 that says
        the token is wrong, and the task is still failed."""
        dashboard.open(f"{TASKS}?status=failed")
        dashboard.tick([failed])
        change()
        dashboard.press(dashboard.bulk_button("retry", "chosen"), confirm="Retry the ticked failed tasks?",
                        status=403)
        assert dashboard.text("#error") == forged
        assert service.status_of(failed) is Status.FAILED

    script = dashboard.driver.execute_script
    retry_ticked_after(lambda: script("document.querySelector('#bulk input[name=csrf]').value = 'f'.repeat(64)"))
    retry_ticked_after(lambda: script("document.querySelector('#bulk input[name=csrf]').remove()"))
    # The form's own token, but the browser's CSRF cookie is gone: as if the token came from another browser.
    retry_ticked_after(lambda: dashboard.driver.delete_cookie("pheanq_csrf"))

    dashboard.open("/tubes")
    dashboard.driver.execute_script(
        "document.querySelector('#tube-list tr[data-tube=billing] input[name=csrf]').value = 'forged'")
    dashboard.press(dashboard.find("#tube-list tr[data-tube=billing] button.pause"), status=403)
    assert dashboard.text("#error") == forged
    assert service.store.admin.paused_tubes(utc_now()) == {}
    assert int(tube_figures(beanstalkd, "billing")["pause"]) == 0

    # Another origin's page with the right token (had it leaked) and the visitor's cookies (127.0.0.1 on another
    # port is the same site): the browser says where the form came from, and that is refused.
    dashboard.open(TASKS)
    token = dashboard.find("#bulk input[name=csrf]").get_attribute("value")
    hostile = f"""<!doctype html><title>elsewhere</title>
        <form method="post" action="{dashboard.server.url}/tasks/action">
        <input type="hidden" name="csrf" value="{token}"><input type="hidden" name="action" value="retry">
        <input type="hidden" name="id" value="{failed}"><button type="submit" id="go">go</button></form>"""
    with another_site(hostile) as elsewhere:
        dashboard.driver.get(elsewhere)
        dashboard.check_console()
        dashboard.press(dashboard.find("#go"), status=403)
    assert dashboard.text("#error") == f"refused: the request came from {elsewhere.rstrip('/')}, not from this " \
                                       f"dashboard ({dashboard.server.url})"
    assert service.status_of(failed) is Status.FAILED
    assert [entry.action for entry in audited(service)] == ["login"]  # nothing refused was done, nor audited

    # The same form, untouched, does it: what was refused above was the token or the origin, not the action.
    dashboard.open(f"{TASKS}?status=failed")
    dashboard.tick([failed])
    dashboard.press(dashboard.bulk_button("retry", "chosen"), confirm="Retry the ticked failed tasks?")
    assert dashboard.note() == "regenerated 1 of 1 selected task(s) (now restarted, back in their tubes)"
    assert service.status_of(failed) is Status.RESTARTED
    assert [entry.action for entry in audited(service)] == ["tasks-retry", "login"]


def test_the_content_security_policy_keeps_an_injected_inline_script_from_running(
    sqlite_url: str, make_scene: MakeScene,
) -> None:
    """What the console check of every page relies on: Chromium reports a blocked script there. And the policy
    holds in the browser: a script that got into the page (as one injected through a task's output would) does
    not run."""
    dashboard = make_scene(sqlite_url).dashboard
    dashboard.log_in(ADMIN_TOKEN, TASKS)
    dashboard.driver.execute_script("""
        var injected = document.createElement("script");
        injected.textContent = "document.body.setAttribute('data-injected', 'ran')";
        document.body.appendChild(injected);
    """)
    assert dashboard.find("body").get_attribute("data-injected") is None
    # The report reaches the log a moment after the script is refused.
    seen: list[dict[str, Any]] = []

    def reported() -> list[dict[str, Any]]:
        seen.extend(entry for entry in console(dashboard.driver) if entry["level"] == "SEVERE")
        return seen

    wait_for(reported, PAGE_WAIT, "the browser's report of the blocked script")
    [blocked] = seen
    assert "violates the following Content Security Policy directive" in blocked["message"], blocked
