"""Pictures of every page of the dashboard, with real data, for the docs (docs/_static/screenshots/*.png).

Everything is real and throwaway: a beanstalkd on a free loopback port, a SQLite database and a pheanq.toml in a
temporary directory, two worker-tenders (the second in a UTS namespace of its own named `app-2`, so the workers
page shows two hosts; on the same host when `unshare` is not allowed) running registered commands and a
Python task with progress; a few thousand tasks end done, failed, retrying, cancelled, upstream_failed; a
running batch, chains waiting on long tasks, failed thumbnails regenerated into a paused tube (restarted), jobs
of a command no worker knows (buried). Then `pheanq web` with an admin user, Debian's headless Chromium logs in,
takes two actions (so the audit shows them) and photographs each page.

    ./scripts/screenshots [--out DIR] [--seconds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from benchlib import BenchError, beanstalkd, free_port, spawn, stop, stop_all

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from web_support import chromium

from pheanq import Retry, TaskDescription
from pheanq.config import load_settings
from pheanq.producer.service import TaskQueueService
from pheanq.storage.migrate import upgrade_database

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "screenshots-admin-token-0123456789"
COMMAND = textwrap.dedent("""\
    import random, sys, time
    kind, subject = sys.argv[1], sys.argv[2]
    time.sleep(random.uniform(0.02, float(sys.argv[3]) if len(sys.argv) > 3 else 0.15))
    print(f"{kind}: {subject}: processed in {random.uniform(0.1, 2.5):.2f} s")
    if subject.startswith(("bounce", "corrupt", "timeout")):
        print(f"{kind}: {subject}: giving up", file=sys.stderr)
        sys.exit(3)
""")
PYTHON_TASKS = textwrap.dedent("""\
    import time
    from pheanq import current_task, task

    @task(tube="reports")
    def import_rows(day: str, rows: int) -> int:
        for n in range(1, rows + 1):
            time.sleep(0.05)
            current_task().progress(n, rows, f"row {n} of {day}")
        return rows
""")


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_static" / "screenshots")
    parser.add_argument("--seconds", type=int, default=75, help="how long the workers run before the pictures")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pheanq-screenshots."))
    try:
        with beanstalkd() as (host, port):
            shoot(work, f"{host}:{port}", options.out, options.seconds)
    except BenchError as error:
        print(f"screenshots: error: {error}", file=sys.stderr)
        return 1
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def shoot(work: Path, server: str, out: Path, seconds: int) -> None:
    (work / "command.py").write_text(COMMAND)
    (work / "shopapp.py").write_text(PYTHON_TASKS)
    python = sys.executable
    commands = {name: [python, str(work / "command.py"), name] for name in
                ("send-mail", "resize-avatar", "thumbnail", "fetch-orders", "load-orders")}
    commands["build-report"] = [python, str(work / "command.py"), "build-report"]
    config = work / "pheanq.toml"
    config.write_text("log_worker_output_on_success = true\n\n[python]\nimports = [\"shopapp\"]\n\n[commands]\n"
                      + "".join(f"{name} = {list_toml(argv)}\n" for name, argv in commands.items()))
    config.chmod(0o600)
    environment = {**os.environ, "PHEANQ_CONFIG": str(config), "PHEANQ_DATABASE_URL": f"sqlite:///{work}/pheanq.db",
                   "PHEANQ_BEANSTALKD": server, "PYTHONPATH": str(work)}
    environment.pop("PHEANQ_WEB_USERS", None)
    settings = load_settings(environ=environment)
    service = TaskQueueService(settings)
    upgrade_database(service.store)
    sys.path.insert(0, str(work))
    import shopapp  # type: ignore[import-not-found]

    queue_work(service, shopapp)
    log("starting two worker-tenders")
    tenders = [
        spawn([*other_host("app-1"), python, "-m", "pheanq", "worker-tender", "--use-tube", "pheanq,mail,images",
               "--min-workers", "3",
               "--max-workers", "4", "--reconcile-interval", "0"], env=environment, cwd=work,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        spawn([*other_host("app-2"), python, "-m", "pheanq", "worker-tender", "--use-tube", "reports",
               "--min-workers", "2", "--max-workers", "3", "--reconcile-interval", "0"], env=environment, cwd=work,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    deadline = time.monotonic() + seconds
    half = time.monotonic() + seconds / 2
    regenerated = False
    while time.monotonic() < deadline:
        time.sleep(1)
        if not regenerated and time.monotonic() > half:
            # Failed thumbnails regenerated into the paused images tube: they wait there, restarted.
            subprocess.run([python, "-m", "pheanq", "pause", "--use-tube", "images"], env=environment, check=True,
                           capture_output=True)
            failed = service.store.listings.task_ids(failed_in("images"), None, 60)[6:]
            for task_id in failed:
                service.regenerate_task(task_id)
            service.queue_many([TaskDescription("thumbnail", [f"upload-{n}.jpg"]) for n in range(150)],
                               tube="images")
            regenerated = True
    web_port = free_port()
    web = spawn([python, "-m", "pheanq", "web", "--bind", f"127.0.0.1:{web_port}"],
                env={**environment, "PHEANQ_WEB_USERS": f"mara:admin:{TOKEN}"}, cwd=work,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: answers(f"http://127.0.0.1:{web_port}/login"), 30, "pheanq web")
    try:
        photograph(f"http://127.0.0.1:{web_port}", out, service)
    finally:
        stop(web)
        for tender in tenders:
            stop(tender, grace=15)
        service.close()


def queue_work(service: TaskQueueService, shopapp: Any) -> None:
    log("queueing tasks")
    service.queue_many([TaskDescription("thumbnail", [("corrupt" if n % 11 == 0 else "upload") + f"-{n}.jpg"])
                        for n in range(400)], tube="images")
    service.queue_many([TaskDescription("send-mail", [("bounce" if n % 23 == 0 else "user") + f"-{n}@example.com"])
                        for n in range(1400)], tube="mail")
    service.queue_many([TaskDescription("send-mail", [f"timeout-{n}@example.com"]) for n in range(40)], tube="mail",
                       retry=Retry(max_attempts=4, delay=20))
    service.queue_many([TaskDescription("resize-avatar", [f"user-{n}", "0.3"]) for n in range(900)])
    # A command no worker knows: its jobs are buried, with the reason.
    service.queue_many([TaskDescription("legacy-export", [f"account-{n}"]) for n in range(12)], tube="reports")
    service.queue_many([TaskDescription("build-report", [f"account-{n}", "40"]) for n in range(6)], tube="reports",
                       priority=10)
    for day in range(1, 6):
        first = TaskDescription("fetch-orders", [("timeout" if day == 3 else "day") + f"-2026-11-{day:02d}", "20"])
        service.queue_chain(first.then(TaskDescription("load-orders", [f"day-2026-11-{day:02d}"])), tube="reports")
    with service.create_batch("nightly import") as batch:
        for day in range(1, 31):
            batch.add(shopapp.import_rows.describe(f"2026-11-{day:02d}", 200 + 10 * day))
    cancelled = service.queue_many([TaskDescription("send-mail", [f"newsletter-{n}@example.com"]) for n in range(60)],
                                   tube="mail", delay=3600)
    for task_id in cancelled[:45]:
        service.cancel_task(task_id, "mara")


def photograph(url: str, out: Path, service: TaskQueueService) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(1440, 1000)
    try:
        def shot(name: str, path: str, ready: Callable[[Any], Any] | None = None, height: int = 1000) -> None:
            driver.set_window_size(1440, height)
            driver.get(url + path)
            if ready is not None:
                WebDriverWait(driver, 30).until(ready)
            driver.save_screenshot(str(out / f"{name}.png"))
            log(f"wrote {out / name}.png")

        shot("login", "/login", height=520)
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "login").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "visitor"))
        # Two actions through the pages, so that the audit shows them: a failed mail retried, a task cancelled.
        failed_mail = service.store.listings.task_ids(failed_in("mail"), None, 1)
        if failed_mail:
            driver.get(f"{url}/tasks/{failed_mail[0]}")
            driver.find_element(By.ID, "retry").click()
            driver.switch_to.alert.accept()
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "note"))
        shot("overview", "/", lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-charts") == "drawn",
             height=1250)
        shot("tasks", "/tasks?status=failed&status=retrying&tube=mail")
        failed = service.store.listings.task_ids(failed_in("images"), None, 1) or failed_mail
        if failed:
            shot("task-failed", f"/tasks/{failed[0]}", height=1450)
        running = [entry for entry in service.store.tasks.progress_of_working(5)]
        if running:
            shot("task-running", f"/tasks/{running[0][0]}", height=1300)
        shot("batches", "/batches", height=600)
        batch_id = service.store.workflow_listings.list_batches(None, 1)[0].id
        shot("batch", f"/batches/{batch_id}", height=800)
        shot("workers", "/workers", height=1100)
        shot("tubes", "/tubes", height=600)
        shot("buried", "/buried?tube=reports", height=800)
        shot("audit", "/audit", height=600)
    finally:
        driver.quit()


def failed_in(tube: str) -> Any:
    """The filter of the failed tasks of a tube."""
    from pheanq.status import Status
    from pheanq.storage.listings import TaskFilter

    return TaskFilter(statuses=(Status.FAILED,), tubes=(tube,))


def other_host(name: str) -> list[str]:
    """A command prefix that runs what follows as if on a host named `name` (a UTS namespace), when allowed."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--uts", "true"], capture_output=True).returncode != 0:
        log("unshare --uts is not allowed here: both tenders run as this host")
        return []
    return [unshare, "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "sh"]


def list_toml(argv: list[str]) -> str:
    return "[" + ", ".join('"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"' for part in argv) + "]"


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not come up within {seconds:.0f} s")
        time.sleep(0.2)


def log(message: str) -> None:
    print(f"screenshots: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
