"""Signed job bodies: with a secret, producers sign and workers bury every job that is not signed with it.

Unit tests cover the job-body codec and its signature (pheanq.body) with and without a secret, and the `secret` setting;
one behaviour test puts forged jobs into a real beanstalkd in front of a real worker process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import greenstalk
import pytest
from support import Beanstalkd, WorkerProcess, one_error_line, pheanq, wait_for, write_config

from pheanq import Status, TaskDescription
from pheanq import body as codec
from pheanq.body import decode_body, encode_body, encode_data
from pheanq.config import MIN_SECRET_LENGTH, load_settings
from pheanq.errors import ConfigError, InvalidInput, MalformedBody, Unsigned, WrongSignature
from pheanq.limits import MAX_BODY_BYTES
from pheanq.producer.service import TaskQueueService
from pheanq.storage.tasks import NewTask

SECRET = "correct horse battery staple 42"
OTHER_SECRET = "another secret, just as long"
TUBE = "pheanq"
DESCRIPTION = TaskDescription("cmd", ["a b", "ü ✓", 7], {"flag": True, "n": -2})
SIGNED = re.compile(rb',"hmac":"([0-9a-f]{64})"\}\Z')

MakeService = Callable[..., TaskQueueService]
MakeEnv = Callable[..., dict[str, str]]
StartWorker = Callable[..., WorkerProcess]


def _mac_of(signed_body: bytes) -> bytes:
    found = SIGNED.search(signed_body)
    assert found is not None, signed_body
    return found.group(1)


# --- pheanq.body: signatures ------------------------------------------------------------------------------------

def test_a_signed_body_is_the_unsigned_json_with_an_hmac_member_over_its_exact_bytes() -> None:
    body = encode_body(42, DESCRIPTION)
    signed = codec.sign(body, SECRET)

    assert signed.startswith(body[:-1]) and len(signed) == len(body) + codec.SIGNATURE_BYTES
    # Computed here with the standard library alone: what another language's producer would do.
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert signed.endswith(f',"hmac":"{expected}"}}'.encode())
    data = json.loads(signed)  # still JSON a person can read with beanstalkd tools
    assert data.pop("hmac") == expected
    assert data == json.loads(body)
    assert codec.verify(signed, SECRET) == body


def test_the_same_body_and_secret_always_give_the_same_signature_and_another_secret_another() -> None:
    body = encode_body(42, DESCRIPTION)
    assert codec.sign(body, SECRET) == codec.sign(body, SECRET)
    assert _mac_of(codec.sign(body, SECRET)) != _mac_of(codec.sign(body, OTHER_SECRET))


@pytest.mark.parametrize("body", [b"", b"{}", b"[1, 2]", b'"text"', b"{no end"])
def test_only_a_non_empty_json_object_can_be_signed(body: bytes) -> None:
    with pytest.raises(ValueError, match="non-empty JSON object"):
        codec.sign(body, SECRET)


def _tampered() -> list[tuple[str, bytes]]:
    body = encode_body(12, DESCRIPTION)
    signed = codec.sign(body, SECRET)
    mac = _mac_of(signed)
    other_mac = _mac_of(codec.sign(body, OTHER_SECRET))
    return [
        ("task id changed", signed.replace(b'"task_id":12', b'"task_id":13')),
        ("description changed", signed.replace(b'"a b"', b'"a c"')),
        ("command changed", signed.replace(b'"command":"cmd"', b'"command":"rm"')),
        ("signed with another secret", signed.replace(mac, other_mac)),
        ("signature of another body", codec.sign(body, SECRET)[:-66] + _mac_of(codec.sign(
            encode_body(13, DESCRIPTION), SECRET)) + b'"}'),
        ("signature truncated", signed.replace(mac, mac[:-2])),
        ("signature too long", signed.replace(mac, mac + b"00")),
        ("signature not hex", signed.replace(mac, b"z" * 64)),
        ("signature in upper case", signed.replace(mac, mac.upper())),
        ("signature empty", signed.replace(mac, b"")),
        ("signature a number", body[:-1] + b',"hmac":12345}'),
        ("signature with spaces", body[:-1] + b', "hmac": "' + mac + b'" }'),
    ]


TAMPERED = _tampered()


@pytest.mark.parametrize("raw", [raw for _, raw in TAMPERED], ids=[why for why, _ in TAMPERED])
def test_a_changed_or_foreign_signature_is_wrong(raw: bytes) -> None:
    with pytest.raises(WrongSignature):
        codec.verify(raw, SECRET)


@pytest.mark.parametrize("raw", [
    encode_body(12, DESCRIPTION),
    b"",
    b"not json",
    b'{"hmac":"' + b"0" * 64 + b'","pheanq":1,"task_id":12}',  # an hmac, but not closing the body
    # A valid signed body with a later task_id appended: JSON's last key would win, but the MAC must too.
    codec.sign(encode_body(12, DESCRIPTION), SECRET)[:-1] + b',"task_id":13}',
])
def test_a_body_without_a_closing_signature_is_unsigned(raw: bytes) -> None:
    with pytest.raises(Unsigned):
        codec.verify(raw, SECRET)


# --- encode_body / decode_body ----------------------------------------------------------------------------------

def test_a_signed_job_body_round_trips_with_the_secret() -> None:
    body = encode_body(123, DESCRIPTION, SECRET)
    decoded = decode_body(body, SECRET)
    assert (decoded.task_id, decoded.description) == (123, DESCRIPTION)
    assert body == codec.sign(encode_body(123, DESCRIPTION), SECRET)


def test_without_a_secret_a_signed_body_is_read_and_its_hmac_ignored() -> None:
    # Rolling deploy: producers sign first, workers that do not check yet still run the jobs.
    for raw in (encode_body(9, DESCRIPTION, SECRET), encode_body(9, DESCRIPTION, OTHER_SECRET),
                encode_body(9, DESCRIPTION)[:-1] + b',"hmac":"not even hex"}'):
        decoded = decode_body(raw)
        assert (decoded.task_id, decoded.description) == (9, DESCRIPTION)


def _malformed(raw: bytes, secret: str) -> str:
    with pytest.raises(MalformedBody) as caught:
        decode_body(raw, secret)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300, message
    # The secret never leaks, nor does the signature the body should have carried (that would forge it).
    correct = [_mac_of(encode_body(task_id, DESCRIPTION, secret)).decode() for task_id in (12, 13)]
    for leak in (secret, *correct):
        assert leak not in message, message
    return message


def test_with_a_secret_an_unsigned_body_is_refused() -> None:
    message = _malformed(encode_body(12, DESCRIPTION), SECRET)
    assert message.startswith("unsigned job body: a secret is configured, so every job must be signed")


@pytest.mark.parametrize("raw", [raw for _, raw in TAMPERED], ids=[why for why, _ in TAMPERED])
def test_with_a_secret_a_changed_or_foreign_signature_is_refused_naming_it(raw: bytes) -> None:
    assert _malformed(raw, SECRET).startswith("wrong signature: ")


def test_a_body_signed_with_another_secret_says_so() -> None:
    message = _malformed(encode_body(12, DESCRIPTION, OTHER_SECRET), SECRET)
    assert "signed with another secret" in message


@pytest.mark.parametrize(("body", "problem"), [
    (b'{"pheanq":2,"task_id":5,"description":{"command":"cmd"}}', "not a pheanq job body"),
    (b'{"pheanq":1,"task_id":-1,"description":{"command":"cmd"}}', "task_id is not a positive integer"),
    (b'{"pheanq":1,"task_id":5,"description":{"command":"bad name"}}', "task 5: command 'bad name'"),
    (b'{"pheanq":1,"task_id":5,"description":{"command":"cmd"}', "not JSON"),
])
def test_a_correctly_signed_body_still_gets_every_other_check(body: bytes, problem: str) -> None:
    # Only a producer holding the secret could make these, but a bug there must not reach a command line.
    assert problem in _malformed(codec.sign(body, SECRET), SECRET)


def test_the_size_limit_counts_the_signature() -> None:
    overhead = len(encode_body(1, TaskDescription("cmd", [""]), SECRET))
    assert overhead == len(encode_body(1, TaskDescription("cmd", [""]))) + codec.SIGNATURE_BYTES
    largest = encode_body(1, TaskDescription("cmd", ["x" * (MAX_BODY_BYTES - overhead)]), SECRET)
    assert len(largest) == MAX_BODY_BYTES
    assert decode_body(largest, SECRET).task_id == 1

    fits_only_unsigned = TaskDescription("cmd", ["x" * (MAX_BODY_BYTES - overhead + 1)])
    assert len(encode_body(1, fits_only_unsigned)) < MAX_BODY_BYTES
    with pytest.raises(InvalidInput, match=f"{MAX_BODY_BYTES + 1} bytes as a job body.*at most {MAX_BODY_BYTES}"):
        encode_body(1, fits_only_unsigned, SECRET)


# --- the `secret` setting ---------------------------------------------------------------------------------------

def _config(tmp_path: Path, secret: Any) -> dict[str, str]:
    path = tmp_path / "pheanq.toml"
    path.write_text(f"secret = {json.dumps(secret)}\n")
    return {"PHEANQ_CONFIG": str(path)}


def test_the_secret_is_unset_by_default() -> None:
    assert load_settings({}, {"PHEANQ_CONFIG": "/dev/null"}).secret is None


def test_the_secret_takes_flag_over_env_over_toml(tmp_path: Path) -> None:
    toml = _config(tmp_path, "from-the-toml-file-0123")
    env = {**toml, "PHEANQ_SECRET": "from-the-environment-0123"}
    assert load_settings({}, toml).secret == "from-the-toml-file-0123"
    assert load_settings({}, env).secret == "from-the-environment-0123"
    assert load_settings({"secret": "from-application-code-0123"}, env).secret == "from-application-code-0123"
    assert load_settings({"secret": None}, env).secret == "from-the-environment-0123"


def test_a_secret_of_the_minimum_length_is_accepted() -> None:
    secret = "s" * MIN_SECRET_LENGTH
    assert MIN_SECRET_LENGTH == 16
    assert load_settings({}, {"PHEANQ_CONFIG": "/dev/null", "PHEANQ_SECRET": secret}).secret == secret


BAD_SECRETS: list[tuple[Any, str]] = [
    ("", "empty"), ("   \t  ", "empty"), ("fifteen-chars!!", "too short"), ("ünïcödé-shört", "too short"),
    (" leading-space-0123456", "whitespace"), ("trailing-newline-0123456\n", "whitespace"),
]


@pytest.mark.parametrize(("secret", "problem"), BAD_SECRETS)
def test_an_empty_short_or_padded_secret_is_refused_without_echoing_it(
    tmp_path: Path, secret: str, problem: str,
) -> None:
    for flags, environ in [({"secret": secret}, {"PHEANQ_CONFIG": "/dev/null"}),
                           ({}, {"PHEANQ_CONFIG": "/dev/null", "PHEANQ_SECRET": secret}),
                           ({}, _config(tmp_path, secret))]:
        with pytest.raises(ConfigError) as caught:
            load_settings(flags, environ)
        message = str(caught.value)
        assert message.startswith("secret: ") and problem in message and "\n" not in message
        if secret.strip():
            assert secret.strip() not in message


@pytest.mark.parametrize("value", [1234567890123456789, True, ["a-list-of-one-long-secret"]])
def test_a_secret_that_is_not_a_string_is_refused_without_echoing_it(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, _config(tmp_path, value))
    assert str(caught.value) == "secret: expected a string"


def test_a_secret_from_a_non_utf8_environment_is_refused() -> None:
    # os.environ hands undecodable bytes over as lone surrogates, which have no UTF-8 form to key an HMAC.
    with pytest.raises(ConfigError, match=r"^secret: is not valid UTF-8 text$"):
        load_settings({}, {"PHEANQ_CONFIG": "/dev/null", "PHEANQ_SECRET": "long-enough-secret-\udcff"})


def test_the_secret_never_shows_in_the_settings_repr() -> None:
    settings = load_settings({}, {"PHEANQ_CONFIG": "/dev/null", "PHEANQ_SECRET": SECRET})
    assert settings.secret == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert "secret" not in repr(settings)


def test_through_the_cli_a_bad_secret_is_one_line_and_exit_code_2_and_there_is_no_secret_flag(
    tmp_path: Path,
) -> None:
    base = {"PATH": "/usr/bin:/bin", "PHEANQ_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}",
            "PHEANQ_CONFIG": "/dev/null"}
    short = pheanq(["status"], {**base, "PHEANQ_SECRET": "hunter2"}, tmp_path)
    assert short.returncode == 2
    line = one_error_line(short)
    assert line.startswith("pheanq: error: secret: is too short") and "hunter2" not in line
    assert "hunter2" not in short.stdout + short.stderr

    # A secret on a command line would be visible to every user in `ps`: there is no flag for it.
    flag = pheanq(["--secret", SECRET, "status"], base, tmp_path)
    assert flag.returncode == 2
    assert "No such option '--secret'" in flag.stderr and SECRET not in flag.stderr
    assert not (tmp_path / "unused.db").exists()


# --- a real worker ----------------------------------------------------------------------------------------------

def _record_command(tmp_path: Path, runs: Path) -> list[str]:
    """A command that appends `<task id> <arguments>` to `runs` and exits 0."""
    script = tmp_path / "record.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        with open(sys.argv[1], "a") as f:
            f.write(" ".join([os.environ["PHEANQ_TASK_ID"], *sys.argv[2:]]) + "\\n")
    """))
    return [sys.executable, str(script), str(runs)]


def test_a_worker_with_a_secret_buries_unsigned_and_foreign_jobs_and_runs_only_the_signed_one(
    sqlite_url: str, tmp_path: Path, beanstalkd: Beanstalkd, make_service: MakeService, make_env: MakeEnv,
    start_worker: StartWorker,
) -> None:
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"record": _record_command(tmp_path, runs)})
    service = make_service(sqlite_url, secret=SECRET)
    # A task recorded but never sent: what someone who can reach beanstalkd would try to make a worker run.
    victim_description = TaskDescription("record", ["victim"])
    victim = service.store.tasks.insert_task(NewTask("record", encode_data(victim_description), TUBE, 1024, 60)).task_id

    client = greenstalk.Client(beanstalkd.address, encoding=None, use=TUBE)
    try:
        forged = [client.put(body, priority=0)  # priority 0: reserved before the real task
                  for body in (encode_body(victim, victim_description),
                               encode_body(victim, victim_description, OTHER_SECRET))]
        good = service.queue_task(TaskDescription("record", ["good"]))

        worker = start_worker([], make_env(sqlite_url, PHEANQ_SECRET=SECRET))
        wait_for(lambda: service.status_of(good) is Status.DONE, 15, "the signed task to be done", interval=0.05)
        wait_for(lambda: client.stats_tube(TUBE)["current-jobs-buried"] == 2, 10, "both forged jobs buried")

        stats = client.stats_tube(TUBE)
        assert (stats["current-jobs-ready"], stats["current-jobs-reserved"]) == (0, 0)
    finally:
        client.close()
    assert worker.process.poll() is None, worker.log  # the worker goes on after refusing them
    assert runs.read_text() == f"{good} good\n"
    victim_row = service.find_task(victim)
    assert (victim_row.status, victim_row.attempts) == (Status.NEW, 0)

    assert f"burying job {forged[0]}: unsigned job body" in worker.log
    assert f"burying job {forged[1]}: wrong signature" in worker.log
    reasons = {row.job_id: row.reason for row in service.store.admin.list_buried(service.beanstalkd.server, TUBE)}
    assert reasons[forged[0]].startswith("unsigned job body")
    assert reasons[forged[1]].startswith("wrong signature")
    assert SECRET not in worker.log and not any(SECRET in reason for reason in reasons.values())

    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.log
    assert worker.lines == ["READY", f"BUSY {good}", "READY"]


def test_a_worker_without_a_secret_runs_signed_jobs_so_producers_can_start_signing_first(
    sqlite_url: str, tmp_path: Path, make_service: MakeService, make_env: MakeEnv, start_worker: StartWorker,
) -> None:
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"record": _record_command(tmp_path, runs)})
    service = make_service(sqlite_url, secret=SECRET)
    task_id = service.queue_task(TaskDescription("record", ["signed"]))

    worker = start_worker(["--stop-when-empty"], make_env(sqlite_url))
    assert worker.wait() == 0, worker.log
    assert service.status_of(task_id) is Status.DONE
    assert runs.read_text() == f"{task_id} signed\n"


@pytest.mark.parametrize("worker_tubes", ["other", "held,other"])
def test_a_signed_job_moved_to_another_tube_is_buried_there_and_its_task_left_to_its_own_tube(
    db_url: str, tmp_path: Path, beanstalkd: Beanstalkd, make_service: MakeService, make_env: MakeEnv,
    start_worker: StartWorker, worker_tubes: str,
) -> None:
    runs = tmp_path / "runs.txt"
    write_config(tmp_path, commands={"record": _record_command(tmp_path, runs)})
    service = make_service(db_url, secret=SECRET)
    env = make_env(db_url, PHEANQ_SECRET=SECRET)
    assert pheanq(["pause", "--use-tube", "held"], env, tmp_path).returncode == 0
    task_id = service.queue_task(TaskDescription("record", ["held"]), tube="held")
    row = service.find_task(task_id)
    job = service.beanstalkd.inspect(row.job_id or 0)
    assert job is not None and job.tube == "held"

    client = greenstalk.Client(beanstalkd.address, encoding=None, use="other")
    try:
        moved = client.put(job.body)  # the signed body, byte for byte, in a tube whose workers are not paused
        # A worker of `other` (or of both, while `held` is paused) reserves the moved job.
        worker = start_worker(["--use-tube", worker_tubes, "--stop-when-empty"], env)
        assert worker.wait(30) == 0, worker.log
        assert client.stats_job(moved)["state"] == "buried"
    finally:
        client.close()
    assert not runs.exists(), "the task ran from a tube that is not its own"
    untouched = service.find_task(task_id)
    assert (untouched.status, untouched.attempts, untouched.job_id, untouched.worker) == (Status.NEW, 0, row.job_id,
                                                                                          None)
    reasons = {record.job_id: record.reason for record in service.store.admin.list_buried(service.beanstalkd.server,
                                                                                          "other")}
    assert f"task {task_id} belongs to tube held" in reasons[moved], reasons

    # Its own job still runs it, in its own tube, once the tube is resumed.
    assert pheanq(["resume", "--use-tube", "held"], env, tmp_path).returncode == 0
    assert start_worker(["--use-tube", "held", "--stop-when-empty"], env).wait(30) == 0
    assert service.status_of(task_id) is Status.DONE
    assert runs.read_text() == f"{task_id} held\n"
