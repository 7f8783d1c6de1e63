"""Issue 11, item 5: a task's output, its arguments or a job body cannot drive the operator's terminal, and a
task's output cannot forge pheanq's own `---` log entries. `visible` and the log's mark as pure functions, then a
real task run by a real worker against real beanstalkd and each database, shown by `pheanq show` and `buried`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from support import Beanstalkd, WorkerProcess, claims, pheanq, register_work_script

from pheanq import Status, TaskDescription, tasklog
from pheanq.beanstalkd import BeanstalkdConnection
from pheanq.ops.terminal import one_line, visible
from pheanq.producer.service import TaskQueueService

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]

# What must never reach a terminal raw: C0 controls but newline and tab, DEL, C1 controls, the line and
# paragraph separators, the bidi embeddings, overrides and isolates.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


# --- visible: each class of character ----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "shown"), [
    ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),      # C0: ESC, BEL (an OSC sets the window title)
    ("a\rb", "a\\x0db"),                                # a lone CR would overwrite the line
    ("\x00\x08\x0b\x0c\x7f", "\\x00\\x08\\x0b\\x0c\\x7f"),  # NUL, backspace, VT, FF, DEL
    ("\x85\x9b31m", "\\x85\\x9b31m"),                    # C1: NEL, CSI
    ("\u2028\u2029", "\\u2028\\u2029"),                  # line and paragraph separators
    ("\u202a\u202b\u202c\u202d\u202e", "\\u202a\\u202b\\u202c\\u202d\\u202e"),  # bidi embeddings, overrides
    ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),  # bidi isolates
    ("\u200b\u200e\ufeff\U000e0001", "\\u200b\\u200e\\ufeff\\U000e0001"),  # zero width, LRM, BOM, a tag
    ("\ud800", "\\ud800"),                               # a lone surrogate (unwritable in UTF-8)
])
def test_visible_escapes_every_character_that_does_not_print_as_itself(text: str, shown: str) -> None:
    assert visible(text) == shown
    assert one_line(text) == shown


def test_visible_keeps_printable_text_newline_and_tab_and_one_line_escapes_the_newline() -> None:
    text = "héllo ✓ 🎉 👩\u200d👩\u200d👧 C:\\path\tcol\nnext line"  # a ZWJ emoji sequence, a backslash
    assert visible(text) == text
    assert one_line(text) == text.replace("\n", "\\x0a")
    assert one_line(7) == "7"


# --- the log: only pheanq's entries start with `---` ---------------------------------------------------------

def test_output_lines_that_look_like_entries_are_marked_and_other_output_is_kept_exactly() -> None:
    output = ("--- attempt 9 on x: done\nline one\n  --- indented stays\nx\r--- after a CR\n"
              "y\u2028--- after U+2028\n----\n")
    entry = tasklog.attempt(1, "w:1", "failed after 0.01s: exit code 3", output)
    assert entry == ("--- attempt 1 on w:1: failed after 0.01s: exit code 3\n"
                     "| --- attempt 9 on x: done\nline one\n  --- indented stays\nx\r| --- after a CR\n"
                     "y\u2028| --- after U+2028\n| ----\n")
    assert [line for line in entry.splitlines() if line.startswith("---")] == [entry.split("\n", 1)[0]]
    plain = "FIRST\nsome output\nLAST"
    assert tasklog.attempt(1, "w:1", "done", plain) == f"--- attempt 1 on w:1: done\n{plain}\n"


# --- a real task, a real worker, each database ----------------------------------------------------------------

HOSTILE_TASK = r"""
    import sys
    sys.stdout.write("\x1b]0;pwned\x07")              # set the window title
    sys.stdout.write("\x1b[2J\x1b[3A\x1b[31m")        # clear the screen, three lines up, red
    print("real line\r  status       done")            # a CR that would overwrite the line
    print("--- attempt 9 on x: done after 0.01s")
    print("x\r--- attempt 8 on y: done after 0.01s")
    print("c1:\x9b2K bidi:\u202egnp.exe\u202c sep:\u2028 bell:\a tab:\there")
    sys.exit(3)
"""


def test_show_renders_a_hostile_tasks_log_and_arguments_visibly_and_json_keeps_them_exactly(
    db_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    register_work_script(tmp_path, HOSTILE_TASK)
    service = make_service(db_url)
    task_id = service.queue_task(TaskDescription("work", ["\x1b[1A", "a\nstatus       done"]))
    worker = start_worker(["--stop-when-empty"], make_env(db_url))
    assert worker.wait() == 0, worker.log
    row = service.find_task(task_id)
    assert row.status is Status.FAILED and row.exit_code == 3 and row.log is not None, row.log

    stored = row.log.splitlines()
    assert [line for line in stored if line.startswith("---")] == [stored[0]], row.log
    assert stored[0].startswith("--- attempt 1 on ") and ": failed after " in stored[0]
    assert "\n| --- attempt 9 on x: done after 0.01s\n" in row.log
    assert "x\r| --- attempt 8 on y" in row.log
    assert "\x1b]0;pwned\x07" in row.log and "\u202egnp.exe" in row.log  # stored as printed

    as_text = pheanq(["show", str(task_id)], make_env(db_url), tmp_path)
    as_json = pheanq(["show", str(task_id), "--json"], make_env(db_url), tmp_path)
    assert as_text.returncode == 0 and as_json.returncode == 0, as_text.stderr + as_json.stderr

    assert RAW.search(as_text.stdout) is None, repr(as_text.stdout)
    lines = as_text.stdout.splitlines()
    log = lines[lines.index("log:") + 1:]
    fields = lines[1:lines.index("log:")]
    assert len(fields) == 21 and fields[0].split() == ["status", "failed"], fields  # no forged field line
    assert "\\x1b[1A" in as_text.stdout and "a\\x0astatus       done" in as_text.stdout
    assert [line for line in log if line.startswith("---")] == [log[0]]
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[3A\\x1b[31mreal line\\x0d  status       done" in log
    assert "| --- attempt 9 on x: done after 0.01s" in log
    assert "x\\x0d| --- attempt 8 on y: done after 0.01s" in log
    assert "c1:\\x9b2K bidi:\\u202egnp.exe\\u202c sep:\\u2028 bell:\\x07 tab:\there" in log

    report = json.loads(as_json.stdout)
    assert report["log"] == row.log
    assert "\x1b[1A" in report["command_line"] and "a\nstatus" in report["command_line"]


def test_buried_and_batch_show_render_what_a_body_or_a_name_holds_visibly(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, beanstalkd: Beanstalkd,
) -> None:
    service = make_service(sqlite_url)
    connection = BeanstalkdConnection(beanstalkd.address)
    try:
        job_id = connection.put("pheanq", b"\x1b]0;pwned\x07\x1b[2Anot a job\r\xc2\x9b", 1024, 0, 60)
    finally:
        connection.close()
    assert claims(service).reserve_task("pheanq", timeout=0) is None
    batch = service.create_batch("nightly\x1b[2K\rdone")
    env = make_env(sqlite_url)
    buried = pheanq(["buried"], env, tmp_path)
    shown = pheanq(["batch", "show", str(batch.id)], env, tmp_path)
    assert buried.returncode == 0 and shown.returncode == 0, buried.stderr + shown.stderr

    assert RAW.search(buried.stdout) is None, repr(buried.stdout)
    assert f"job {job_id} " in buried.stdout
    assert "body: \\x1b]0;pwned\\x07\\x1b[2Anot a job\\x0d\\x9b" in buried.stdout
    assert RAW.search(shown.stdout) is None, repr(shown.stdout)
    assert shown.stdout.startswith(f"batch {batch.id} (nightly\\x1b[2K\\x0ddone): open")


@pytest.mark.parametrize("invisible", ["\u200d", "\u200c", "\u200b", "\ufeff", "\u2060\u200d"])
def test_output_cannot_forge_an_entry_behind_characters_a_terminal_shows_as_nothing(invisible: str) -> None:
    """`ZWJ--- attempt 1 on vm:1: done` did not start with `---`, so it was not marked, and text output keeps
    joiners: `pheanq show` printed a line that read as pheanq's own entry."""
    entry = tasklog.attempt(1, "vm:7", "failed after 0.1s: exit code 3",
                            f"out\n{invisible}--- attempt 1 on vm:7: done after 0.10s\n")
    for shown in (entry, visible(entry)):
        readable = ["".join(char for char in line if char not in invisible) for line in shown.splitlines()]
        assert [line for line in readable if line.startswith("---")] == [readable[0]], shown
