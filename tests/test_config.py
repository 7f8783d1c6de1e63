"""Settings come from flags over environment over pheanq.toml over defaults, key by key; every bad value is a
ConfigError naming its key, and through the CLI a one-line error with exit code 2. A tube named `default`
works like any other."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support import WorkerProcess, free_port, need_second_local_user, one_error_line, pheanq, write_config

from pheanq import Status, TaskDescription
from pheanq.config import Settings, load_settings, mask_url
from pheanq.errors import ConfigError
from pheanq.producer.service import TaskQueueService
from pheanq.storage import Store

# key, its environment variable, then the value each layer gives and the setting it makes
# (toml value, env value, flag value), (default, from toml, from env, from flag).
LAYERS: list[tuple[str, str | None, tuple[Any, str | None, Any], tuple[Any, Any, Any, Any]]] = [
    ("database_url", "PHEANQ_DATABASE_URL", ("sqlite:///toml.db", "postgresql://u@h/env", "mysql://u@h/flag"),
     ("sqlite:///pheanq.db", "sqlite:///toml.db", "postgresql://u@h/env", "mysql://u@h/flag")),
    ("beanstalkd", "PHEANQ_BEANSTALKD", ("10.0.0.1:1001", "10.0.0.2:1002", "[::1]:1003"),
     (("127.0.0.1", 11300), ("10.0.0.1", 1001), ("10.0.0.2", 1002), ("::1", 1003))),
    ("default_tube", "PHEANQ_TUBE", ("from-toml", "from_env", "from.flag"),
     ("pheanq", "from-toml", "from_env", "from.flag")),
    ("log_worker_output_on_failure", "PHEANQ_LOG_WORKER_OUTPUT_ON_FAILURE", (False, "yes", "off"),
     (True, False, True, False)),
    ("log_worker_output_on_success", "PHEANQ_LOG_WORKER_OUTPUT_ON_SUCCESS", (True, "0", True),
     (False, True, False, True)),
    ("max_log_bytes", "PHEANQ_MAX_LOG_BYTES", (100, "200", 300), (65536, 100, 200, 300)),
    ("commands", None, (None, None, {"job": ["/bin/flag"]}),
     ({}, {"job": ("/bin/toml", "-x")}, {"job": ("/bin/toml", "-x")}, {"job": ("/bin/flag",)})),
]


@pytest.mark.parametrize(("key", "env_name", "given", "expected"), LAYERS, ids=[layer[0] for layer in LAYERS])
def test_each_key_takes_flag_over_env_over_toml_over_default(
    tmp_path: Path, key: str, env_name: str | None, given: tuple[Any, str | None, Any],
    expected: tuple[Any, Any, Any, Any],
) -> None:
    toml_value, env_value, flag_value = given
    if key == "commands":
        path = write_config(tmp_path, commands={"job": ["/bin/toml", "-x"]})
    else:
        path = write_config(tmp_path, **{key: toml_value})
    (tmp_path / "empty").mkdir()
    empty = write_config(tmp_path / "empty")
    env = {"PHEANQ_CONFIG": str(path)}
    if env_name is not None:
        env[env_name] = str(env_value)

    default, from_toml, from_env, from_flag = expected
    assert getattr(load_settings({}, {"PHEANQ_CONFIG": str(empty)}), key) == default
    assert getattr(load_settings({}, {"PHEANQ_CONFIG": str(path)}), key) == from_toml
    assert getattr(load_settings({}, env), key) == from_env
    assert getattr(load_settings({key: flag_value}, env), key) == from_flag
    # A flag left unset (None, as click passes it) does not hide the layers below.
    assert getattr(load_settings({key: None}, env), key) == from_env


def test_defaults_apply_when_nothing_is_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({}, {})
    assert settings == Settings()
    assert settings.config_file is None
    assert "example-task-worker" in settings.registry()


def test_pheanq_config_names_the_file_and_the_config_flag_beats_it(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    from_env = write_config(tmp_path / "a", default_tube="from-env-file")
    from_flag = write_config(tmp_path / "b", default_tube="from-flag-file")
    settings = load_settings({}, {"PHEANQ_CONFIG": str(from_env)})
    assert (settings.default_tube, settings.config_file) == ("from-env-file", str(from_env))
    settings = load_settings({"config_file": str(from_flag)}, {"PHEANQ_CONFIG": str(from_env)})
    assert (settings.default_tube, settings.config_file) == ("from-flag-file", str(from_flag))


def test_pheanq_toml_in_the_working_directory_is_not_read_but_the_one_in_the_config_directory_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_config(tmp_path, default_tube="from-cwd")
    (tmp_path / "xdg" / "pheanq").mkdir(parents=True)
    (tmp_path / "home" / ".config" / "pheanq").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    in_xdg = write_config(tmp_path / "xdg" / "pheanq", default_tube="from-xdg")
    in_home = write_config(tmp_path / "home" / ".config" / "pheanq", default_tube="from-home")
    named = write_config(tmp_path / "other", max_log_bytes=5)
    monkeypatch.chdir(tmp_path)
    xdg = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}

    assert load_settings({}, {"HOME": str(tmp_path / "nobody")}).default_tube == "pheanq"
    settings = load_settings({}, xdg)
    assert (settings.default_tube, settings.config_file) == ("from-xdg", str(in_xdg))
    # XDG_CONFIG_HOME unset, or relative (which the XDG rule says to ignore): ~/.config
    assert load_settings({}, {"HOME": xdg["HOME"]}).config_file == str(in_home)
    assert load_settings({}, {**xdg, "XDG_CONFIG_HOME": "xdg"}).config_file == str(in_home)
    settings = load_settings({}, {**xdg, "PHEANQ_CONFIG": str(named)})
    assert (settings.default_tube, settings.max_log_bytes) == ("pheanq", 5)
    assert load_settings({}, {**xdg, "PHEANQ_CONFIG": "/dev/null"}).default_tube == "pheanq"


def test_a_worker_does_not_take_commands_from_a_pheanq_toml_in_its_working_directory(
    sqlite_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]], start_worker: Callable[..., WorkerProcess],
) -> None:
    planted = tmp_path / "planted-ran"
    env = make_env(sqlite_url)
    del env["PHEANQ_CONFIG"]
    env.update(XDG_CONFIG_HOME=str(tmp_path / "empty-config-home"), HOME=str(tmp_path))
    write_config(tmp_path, commands={"report": ["/usr/bin/touch", str(planted)]})  # the worker's working directory
    service = make_service(sqlite_url)
    task_id = service.queue_task(TaskDescription("report"))

    worker = start_worker(["--stop-when-empty"], env)
    assert worker.wait() == 0, worker.log
    assert not planted.exists()
    assert service.status_of(task_id) is Status.NEW  # buried: the command is not registered on this worker
    assert "command 'report' is not registered" in worker.log


@contextlib.contextmanager
def _owned_by_someone_else(path: Path) -> Iterator[None]:
    """chown `path` to a throwaway system user, removed afterwards whatever happens."""
    need_second_local_user("a config file of another user")
    name = f"pheanq-cfg-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        shutil.chown(path, user=name)
        yield
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.mark.parametrize("problem", ["group-writable", "world-writable", "another user's"])
@pytest.mark.parametrize("where", ["named", "config directory"])
def test_a_config_file_another_user_could_have_written_is_refused_with_one_line_and_exit_code_2(
    tmp_path: Path, problem: str, where: str,
) -> None:
    directory = tmp_path / "other" if where == "named" else tmp_path / "xdg" / "pheanq"
    directory.mkdir(parents=True)
    path = write_config(directory, commands={"report": ["/usr/bin/true"]})
    env = {"PATH": "/usr/bin:/bin", "PHEANQ_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}",
           "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
    if where == "named":
        env["PHEANQ_CONFIG"] = str(path)
    with contextlib.ExitStack() as stack:
        if problem == "another user's":
            stack.enter_context(_owned_by_someone_else(path))
            fix = "chown"
        else:
            path.chmod(0o620 if problem == "group-writable" else 0o602)
            fix = f"chmod go-w {path}"
        result = pheanq(["status"], env, tmp_path)

        line = one_error_line(result)
        assert result.returncode == 2 and result.stdout == ""
        assert line.startswith(f"pheanq: error: config file {path}: ") and fix in line, line
    assert not (tmp_path / "unused.db").exists()


def test_a_config_file_of_this_user_or_root_without_group_or_other_write_is_read(tmp_path: Path) -> None:
    path = write_config(tmp_path, default_tube="mine")
    path.chmod(0o644)
    assert load_settings({}, {"PHEANQ_CONFIG": str(path)}).default_tube == "mine"
    path.chmod(0o600)
    assert load_settings({}, {"PHEANQ_CONFIG": str(path)}).default_tube == "mine"


OTHER_UID = 65534  # nobody: "another local user" as the owner of a terminal


@pytest.mark.parametrize("device", ["another user's terminal", "a FIFO"])
def test_a_config_path_that_leads_to_a_terminal_or_a_pipe_is_refused_in_one_line_without_reading_it(
    tmp_path: Path, device: str,
) -> None:
    """Issue 11, item 7 (review): a named config file that another user linked to their pty (or a FIFO) gave
    a root worker the [commands] they typed into it. Only /dev/null itself is a device pheanq reads."""
    link = tmp_path / "pheanq.toml"
    with contextlib.ExitStack() as stack:
        if device == "a FIFO":
            os.mkfifo(tmp_path / "fifo", 0o600)
            link.symlink_to(tmp_path / "fifo")
        else:
            master, slave = pty.openpty()
            stack.callback(os.close, master)
            name = os.ttyname(slave)
            if os.geteuid() == 0:
                os.chown(name, OTHER_UID, -1)  # the attacker's own terminal
            os.close(slave)
            link.symlink_to(name)
            os.write(master, b'[commands]\nevil = ["/usr/bin/id"]\n\x04')
        env = {"PATH": "/usr/bin:/bin", "PHEANQ_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}",
               "PHEANQ_CONFIG": str(link), "HOME": str(tmp_path)}
        result = pheanq(["status"], env, tmp_path, timeout=20)  # a FIFO opened to be read waited for a writer

        line = one_error_line(result)
        assert result.returncode == 2 and result.stdout == ""
        assert line.startswith(f"pheanq: error: config file {link}: not a plain file") and "/dev/null" in line, line
    assert not (tmp_path / "unused.db").exists()


def test_dev_null_is_read_as_an_empty_config_file_under_any_name(tmp_path: Path) -> None:
    link = tmp_path / "pheanq.toml"
    link.symlink_to(os.devnull)
    settings = load_settings({}, {"PHEANQ_CONFIG": str(link), "HOME": str(tmp_path)})
    assert settings.default_tube == "pheanq" and "evil" not in settings.registry()


def test_configured_commands_join_the_builtin_example(tmp_path: Path) -> None:
    path = write_config(tmp_path, commands={"report": ["/usr/bin/env", "report"], "a.b:c-d_e": ["/bin/true"]})
    registry = load_settings({}, {"PHEANQ_CONFIG": str(path)}).registry()
    assert registry["report"] == ("/usr/bin/env", "report")
    assert registry["a.b:c-d_e"] == ("/bin/true",)
    assert registry["example-task-worker"][1:] == ("-m", "pheanq", "example-task-worker")


def _error(flags: dict[str, Any], environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags, environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_an_unknown_toml_key_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, database_url="sqlite:///x.db", tube="typo")
    assert "unknown key 'tube'" in _error({}, {"PHEANQ_CONFIG": str(path)})


def test_an_unknown_setting_passed_as_a_flag_is_named() -> None:
    assert "unknown setting 'tube'" in _error({"tube": "x"}, {})


def test_a_named_config_file_that_is_absent_is_an_error_from_flag_and_env(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    assert _error({"config_file": missing}, {}) == f"config file {missing}: no such file"
    assert _error({}, {"PHEANQ_CONFIG": missing}) == f"config file {missing}: no such file"


def test_a_config_file_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    assert f"config file {tmp_path}: not a plain file" in _error({"config_file": str(tmp_path)}, {})


@pytest.mark.parametrize("content", [b"database_url = \n", b"[commands\n", b"x = 'a' 'b'\n",
                                     b'default_tube = "\xff\xfe"\n'])
def test_a_config_file_that_is_not_toml_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "pheanq.toml"
    path.write_bytes(content)
    assert f"config file {path}: not valid TOML" in _error({}, {"PHEANQ_CONFIG": str(path)})


BAD_VALUES: list[tuple[str, Any]] = [
    ("database_url", "not a url"), ("database_url", "oracle://u@h/db"), ("database_url", "postgresql://h:abc/db"),
    ("database_url", ""), ("database_url", 42),
    ("beanstalkd", "localhost"), ("beanstalkd", ":11300"), ("beanstalkd", "h:0"), ("beanstalkd", "h:65536"),
    ("beanstalkd", "h:abc"), ("beanstalkd", "h:²"), ("beanstalkd", "h:-1"), ("beanstalkd", 11300),
    ("default_tube", ""), ("default_tube", "-starts-with-dash"), ("default_tube", "two words"),
    ("default_tube", "x" * 201), ("default_tube", "tube\n"), ("default_tube", "é"), ("default_tube", 5),
    ("log_worker_output_on_failure", "maybe"), ("log_worker_output_on_failure", "2"),
    ("log_worker_output_on_success", ""), ("log_worker_output_on_success", "tru"),
    ("max_log_bytes", "0"), ("max_log_bytes", "-1"), ("max_log_bytes", "abc"), ("max_log_bytes", "1.5"),
    ("max_log_bytes", 1.5), ("max_log_bytes", True), ("max_log_bytes", 0),
    ("commands", "python"), ("commands", ["a"]), ("commands", {"bad name": ["x"]}), ("commands", {"a\n": ["x"]}),
    ("commands", {"a": []}), ("commands", {"a": "python"}), ("commands", {"a": [1]}), ("commands", {"a": [""]}),
    ("pass_env", "A B"), ("pass_env", "A,1B"), ("pass_env", ["A=B"]), ("pass_env", [1]), ("pass_env", 5),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_a_bad_value_is_a_config_error_naming_its_key_from_flags_and_toml(
    tmp_path: Path, key: str, value: Any,
) -> None:
    assert _error({key: value}, {}).startswith(key)
    path = tmp_path / "pheanq.toml"
    path.write_text(_toml_entry(key, value))
    assert _error({}, {"PHEANQ_CONFIG": str(path)}).startswith(key)


def _toml_entry(key: str, value: Any) -> str:
    """`key = value` in TOML, any value (JSON's string escapes are TOML's too)."""
    if isinstance(value, dict):
        return f"[{key}]\n" + "".join(f"{json.dumps(name)} = {json.dumps(argv)}\n" for name, argv in value.items())
    if isinstance(value, bool):
        return f"{key} = {str(value).lower()}\n"
    return f"{key} = {json.dumps(value)}\n"


ENV_NAMES = {"database_url": "PHEANQ_DATABASE_URL", "beanstalkd": "PHEANQ_BEANSTALKD", "default_tube": "PHEANQ_TUBE",
             "log_worker_output_on_failure": "PHEANQ_LOG_WORKER_OUTPUT_ON_FAILURE",
             "log_worker_output_on_success": "PHEANQ_LOG_WORKER_OUTPUT_ON_SUCCESS",
             "max_log_bytes": "PHEANQ_MAX_LOG_BYTES", "pass_env": "PHEANQ_PASS_ENV"}


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, v in BAD_VALUES if k in ENV_NAMES and isinstance(v, str)])
def test_a_bad_value_in_the_environment_is_a_config_error_naming_its_key(key: str, value: str) -> None:
    assert _error({}, {ENV_NAMES[key]: value}).startswith(key)


MASKED_URLS = [
    ("postgresql://app:hunter2@db/app", "postgresql://app:***@db/app"),
    ("postgresql://app@db/app?password=hunter2&application_name=w", "postgresql://app@db/app?application_name=w&password=***"),
    ("mysql://app@db/app?passwd=hunter2", "mysql://app@db/app?passwd=***"),
    ("postgresql://app:hunter2@db/app?sslpassword=hunter2&sslmode=require",
     "postgresql://app:***@db/app?sslmode=require&sslpassword=***"),
    ("postgresql://app:hunter2@db:abc/app?PassWord=hunter2", "postgresql://app:***@db:abc/app?PassWord=***"),
    ("sqlite:///var/lib/app/pheanq.db", "sqlite:///var/lib/app/pheanq.db"),
]


@pytest.mark.parametrize(("url", "masked"), MASKED_URLS)
def test_a_database_urls_password_and_credential_parameters_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_a_bad_database_url_is_named_in_the_error_without_its_credentials() -> None:
    message = _error({"database_url": "postgresql://app:hunter2@db:abc/app?password=hunter3"},
                     {"PHEANQ_CONFIG": "/dev/null"})
    assert message.startswith("database_url: ") and "app:***@db" in message and "password=***" in message
    assert "hunter2" not in message and "hunter3" not in message


def test_an_unreachable_database_is_reported_without_the_credentials_of_its_url(tmp_path: Path) -> None:
    url = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/app?password=hunter3&connect_timeout=5"
    result = pheanq(["status"], {"PATH": "/usr/bin:/bin", "PHEANQ_DATABASE_URL": url, "PHEANQ_CONFIG": "/dev/null"},
                    tmp_path)
    line = one_error_line(result)
    assert "is unreachable" in line and "app:***@127.0.0.1" in line and "password=***" in line
    assert "hunter2" not in result.stderr + result.stdout and "hunter3" not in result.stderr + result.stdout


def test_a_database_driver_that_is_not_installed_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^database_url: .*nodriver"):
        Store(f"sqlite+nodriver:///{tmp_path / 'x.db'}")


CLI_ERRORS: list[tuple[list[str], dict[str, str], str]] = [
    (["--database-url", "not a url", "status"], {}, "database_url"),
    (["--database-url", "postgresql://h:abc/db", "status"], {}, "database_url"),
    (["--database-url", "sqlite+nodriver:///x.db", "status"], {}, "database_url"),
    (["--beanstalkd", "localhost", "status"], {}, "beanstalkd"),
    (["status"], {"PHEANQ_BEANSTALKD": "h:²"}, "beanstalkd"),
    (["status"], {"PHEANQ_TUBE": "-bad"}, "default_tube"),
    (["status"], {"PHEANQ_LOG_WORKER_OUTPUT_ON_FAILURE": "maybe"}, "log_worker_output_on_failure"),
    (["status"], {"PHEANQ_MAX_LOG_BYTES": "0"}, "max_log_bytes"),
    (["--config", "missing.toml", "status"], {}, "missing.toml: no such file"),
    (["status"], {"PHEANQ_CONFIG": "unknown.toml"}, "unknown key 'tube'"),
    (["status"], {"PHEANQ_CONFIG": "broken.toml"}, "not valid TOML"),
    (["status"], {"PHEANQ_CONFIG": "commands.toml"}, "commands: 'bad name'"),
    (["add-example-task", "--use-tube", "a b"], {}, "--use-tube"),
]


def test_every_config_error_through_the_cli_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    (tmp_path / "unknown.toml").write_text('tube = "x"\n')
    (tmp_path / "broken.toml").write_text("[commands\n")
    (tmp_path / "commands.toml").write_text('[commands]\n"bad name" = ["x"]\n')
    base = {"PATH": "/usr/bin:/bin", "PHEANQ_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}"}

    def run(case: tuple[list[str], dict[str, str], str]) -> tuple[str, int, str]:
        args, env, _ = case
        result = pheanq(args, {**base, **env}, tmp_path)
        return one_error_line(result), result.returncode, result.stdout

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(run, CLI_ERRORS))
    for (args, env, named), (line, code, stdout) in zip(CLI_ERRORS, outcomes, strict=True):
        assert code == 2, (args, env, line)
        assert line.startswith("pheanq: error: ") and named in line, (args, env, line)
        assert stdout == ""
    assert not (tmp_path / "unused.db").exists()


def test_a_tube_named_default_works_end_to_end(
    sqlite_url: str, tmp_path: Path, make_service: Callable[..., TaskQueueService],
    make_env: Callable[..., dict[str, str]], start_worker: Callable[..., WorkerProcess],
) -> None:
    write_config(tmp_path, default_tube="default", commands={"noop": [sys.executable, "-c", "pass"]})
    service = make_service(sqlite_url, default_tube="default")
    in_default = service.queue_task(TaskDescription("noop"))
    in_other = service.queue_task(TaskDescription("noop"), tube="other")
    assert service.find_task(in_default).tube == "default"
    env = make_env(sqlite_url)

    # A worker on another tube ignores `default`, which every beanstalkd connection starts out watching.
    other = start_worker(["--use-tube", "other", "--stop-when-empty"], env)
    assert other.wait() == 0, other.log
    assert other.lines == ["READY", f"BUSY {in_other}", "READY"]
    assert service.status_of(in_default) is Status.NEW

    # The configured default tube is `default`: the worker watches it and runs the task queued there.
    worker = start_worker(["--stop-when-empty"], env)
    assert worker.wait() == 0, worker.log
    assert worker.lines == ["READY", f"BUSY {in_default}", "READY"]
    assert service.status_of(in_default) is Status.DONE
    assert service.status_of(in_other) is Status.DONE
