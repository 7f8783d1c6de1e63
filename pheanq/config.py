"""Settings, read in this order: command-line flags > environment (PHEANQ_*) > pheanq.toml > defaults.

The toml file is read only when it is named (--config, PHEANQ_CONFIG) or from the user's config directory
($XDG_CONFIG_HOME/pheanq/pheanq.toml), never from the working directory: whoever can write a worker's working
directory must not be able to redefine its [commands]. A file that another user owns or could write is refused.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from pheanq.errors import ConfigError
from pheanq.schedules import Schedule, parse_schedules
from pheanq.task_limits import LimitTable, parse_limits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

# The config file read when none is named, under $XDG_CONFIG_HOME (~/.config when that is unset or relative).
CONFIG_FILE_NAME = "pheanq.toml"
CONFIG_DIR_NAME = "pheanq"

# A shorter secret is refused: it could be guessed offline from any one signed job body.
MIN_SECRET_LENGTH = 16

# beanstalkd's own rule for tube names (protocol.txt: "Names").
Address = tuple[str, int]

_TUBE_NAME = re.compile(r"^[A-Za-z0-9+/;.$_()][A-Za-z0-9\-+/;.$_()]{0,199}\Z")


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///pheanq.db"
    # One server as (host, port), or several as a tuple of them (pheanq.beanstalkd spreads jobs over them).
    beanstalkd: Address | tuple[Address, ...] = ("127.0.0.1", 11300)
    default_tube: str = "pheanq"
    commands: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    log_worker_output_on_failure: bool = True
    log_worker_output_on_success: bool = False
    max_log_bytes: int = 65536
    run_dir: str | None = None      # where worker-tenders keep their lock files; None: the platform's default
    # Signs job bodies (pheanq.body); kept out of repr so it never reaches a log or a traceback.
    secret: str | None = dataclasses.field(default=None, repr=False)
    # Variables a task's command receives although pheanq would keep them out (pheanq.worker.task_env).
    pass_env: tuple[str, ...] = ()
    # Python tasks (pheanq.worker.python_pool): the modules a worker imports to register its `@task` functions,
    # how many tasks one child process runs before it is replaced, and the resident memory (MB) past which a
    # child is stopped.
    python_imports: tuple[str, ...] = ()
    max_tasks_per_child: int = 1000
    max_child_memory: int | None = None
    # Who may use the dashboard and the metrics endpoint (pheanq.web): name -> role and token. None given, they
    # serve loopback addresses only, to anyone who can reach them there.
    web_users: Mapping[str, WebUser] = dataclasses.field(default_factory=dict, repr=False)
    # Cluster-wide concurrency and rate limits (pheanq.task_limits): pheanq.toml's [limits] table.
    limits: LimitTable = dataclasses.field(default_factory=LimitTable)
    # The recurring schedules of pheanq.toml's [schedules] table (pheanq.schedules; those of code are added there).
    schedules: tuple[Schedule, ...] = ()
    config_file: str | None = None

    def registry(self) -> dict[str, tuple[str, ...]]:
        """The commands a worker may run: the built-in example plus the configured ones."""
        return {**builtin_commands(), **self.commands}

    @property
    def beanstalkd_servers(self) -> tuple[Address, ...]:
        """Every beanstalkd server, in the order given: one or several."""
        first = self.beanstalkd[0]
        if isinstance(first, tuple):
            return tuple(self.beanstalkd)  # type: ignore[arg-type]  # a tuple of addresses
        return (self.beanstalkd,)  # type: ignore[return-value]  # one address

    @property
    def beanstalkd_address(self) -> str:
        """The servers as the setting takes them: `host:port`, or several joined by commas."""
        return ",".join(address_text(address) for address in self.beanstalkd_servers)


WEB_ROLES = ("read", "admin")


@dataclasses.dataclass(frozen=True)
class WebUser:
    """A dashboard user: `read` sees every page, `admin` may also act (retry, cancel, delete, pause, kick)."""

    role: str
    token: str = dataclasses.field(repr=False)


def builtin_commands() -> dict[str, tuple[str, ...]]:
    return {"example-task-worker": (sys.executable, "-m", "pheanq", "example-task-worker")}


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from flags, the environment and the toml file, each key checked."""
    environ = os.environ if environ is None else environ
    flags = {key: value for key, value in (flags or {}).items() if value is not None}
    path = flags.pop("config_file", None) or environ.get("PHEANQ_CONFIG")
    if path is None and default_config_file(environ).is_file():
        path = str(default_config_file(environ))
    raw: dict[str, Any] = _read_toml(path) if path else {}
    raw.update(_python_section(raw.pop("python", None)))
    raw.update(_web_section(raw.pop("web", None)))
    schedules = raw.pop("schedules", None)
    for key, env_name in _ENV_NAMES.items():
        if env_name in environ:
            raw[key] = environ[env_name]
    unknown = sorted(set(flags) - set(_PARSERS))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} (known: {', '.join(_PARSERS)})")
    raw.update(flags)
    values: dict[str, Any] = {key: _PARSERS[key](key, value) for key, value in raw.items()}
    values["schedules"] = parse_schedules(schedules, {**builtin_commands(), **values.get("commands", {})})
    for schedule in values["schedules"]:
        if schedule.tube is not None:
            check_tube_name(schedule.tube, f"schedules.{schedule.name}.tube")
    return Settings(config_file=str(path) if path else None, **values)


def default_config_file(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_CONFIG_HOME/pheanq/pheanq.toml, or ~/.config/pheanq/pheanq.toml (the XDG base directory rule)."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME", "")
    home = Path(environ["HOME"]) if os.path.isabs(environ.get("HOME", "")) else Path.home()
    root = Path(base) if os.path.isabs(base) else home / ".config"
    return root / CONFIG_DIR_NAME / CONFIG_FILE_NAME


def mask_url(text: str) -> str:
    """`text`, a database URL, with its credentials hidden: the password and credential query parameters."""
    try:
        text = make_url(text).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not a URL SQLAlchemy reads, but it may still hold credentials: hide what looks like them.
        text = re.sub(r"(://[^/?#@:]*:).*@", r"\1***@", text)
    return _CREDENTIAL_PARAMETER.sub(r"\1***", text)


def is_credential_parameter(name: str) -> bool:
    """Whether a database URL's query parameter carries a credential (password=, sslpassword=, token=, ...)."""
    return re.search(_CREDENTIAL_WORDS, name, re.IGNORECASE) is not None


def check_tube_name(name: str, what: str = "tube") -> str:
    if not isinstance(name, str) or not _TUBE_NAME.match(name):
        raise ConfigError(
            f"{what}: {name!r} is not a beanstalkd tube name "
            "(1-200 of A-Z a-z 0-9 - + / ; . $ _ ( ), not starting with -)"
        )
    return name


def _read_toml(path: str) -> dict[str, Any]:
    try:
        # Opened without blocking (a FIFO would wait for a writer) and never as this process's terminal;
        # what the descriptor names is checked before a byte of it is read.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            _check_config_file(path, os.fstat(descriptor))
            os.set_blocking(descriptor, True)
        except BaseException:
            os.close(descriptor)
            raise
        with open(descriptor, "rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: no such file") from None
    except OSError as error:
        raise ConfigError(f"config file {path}: cannot be read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path}: not valid TOML ({error})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not valid TOML (not UTF-8 text)") from None
    known = [key for key in _PARSERS if key not in _PYTHON_SECTION.values() and key != "web_users"]
    known += ["python", "web", "schedules"]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    return data


def _check_config_file(path: str, status: os.stat_result) -> None:
    """Refuse a file that someone other than this user (or root) could have written: its [commands] run.

    /dev/null itself (by its device number, whatever the path) is the one exception: it holds nothing. Any
    other device, a FIFO or a socket is refused whoever owns it: what a terminal or a pipe gives is what
    someone typed or wrote into it just now, not a file its owner keeps.
    """
    if stat.S_ISCHR(status.st_mode) and status.st_rdev == _null_device():
        return
    if not stat.S_ISREG(status.st_mode):
        raise ConfigError(f"config file {path}: not a plain file (a terminal or a pipe gives what someone writes into "
                          f"it now, a directory nothing): name a file of your own, or /dev/null")
    if status.st_uid not in (os.geteuid(), 0):
        raise ConfigError(f"config file {path}: owned by uid {status.st_uid}, not by this user (uid "
                          f"{os.geteuid()}); it could redefine the commands a worker runs: "
                          f"chown {os.geteuid()} {path}, or name a file of your own")
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"config file {path}: writable by group or others, who could redefine the commands a "
                          f"worker runs: chmod go-w {path}")


def _null_device() -> int | None:
    try:
        return os.stat(os.devnull).st_rdev
    except OSError:
        return None


def _parse_database_url(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a database URL string")
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(f"{key}: {mask_url(value)!r} is not a database URL (e.g. sqlite:///pheanq.db)") from None
    if url.get_backend_name() not in ("sqlite", "postgresql", "mysql", "mariadb"):
        raise ConfigError(f"{key}: {url.get_backend_name()!r} databases are not supported "
                          "(sqlite, postgresql, mysql, mariadb)")
    return value


_CREDENTIAL_WORDS = r"pass|pwd|secret|token|key"
_CREDENTIAL_PARAMETER = re.compile(rf"([?&;][^=&;#]*(?:{_CREDENTIAL_WORDS})[^=&;#]*=)[^&;#]*", re.IGNORECASE)


def address_text(address: Address) -> str:
    """`host:port`, as the setting, the messages and the server records name a server."""
    host, port = address
    return f"{host}:{port}"


def _parse_servers(key: str, value: Any) -> Address | tuple[Address, ...]:
    """One `host:port`, or several: a comma-separated text or a list. One stays an address, as before."""
    if isinstance(value, tuple):
        return value
    items = [str(item) for item in value] if isinstance(value, list) else str(value).split(",")
    addresses = tuple(_parse_address(key, item.strip()) for item in items if item.strip())
    if not addresses:
        raise ConfigError(f"{key}: no server given (host:port, or several separated by commas)")
    seen: set[Address] = set()
    for address in addresses:
        if address in seen:
            raise ConfigError(f"{key}: {address_text(address)} is given twice")
        seen.add(address)
    return addresses[0] if len(addresses) == 1 else addresses


def _parse_address(key: str, value: str) -> Address:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: {value!r} is not host:port (e.g. 127.0.0.1:11300, or several separated by "
                          "commas)")
    return host.strip("[]"), int(port)


def _parse_tube(key: str, value: Any) -> str:
    return check_tube_name(value, key)


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: {value!r} is not a boolean (true/false)")


def _parse_directory(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ConfigError(f"{key}: expected a directory path, got {value!r}")
    return value


def _parse_positive_int(key: str, value: Any) -> int:
    try:
        number = int(value) if isinstance(value, (int, str)) else 0
    except ValueError:
        number = 0
    if isinstance(value, bool) or number <= 0:
        raise ConfigError(f"{key}: {value!r} is not a positive whole number")
    return number


def _parse_secret(key: str, value: Any) -> str:
    # Messages name the problem, never the value: a secret must not reach a log or a terminal.
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string")
    if not value.strip():
        raise ConfigError(f"{key}: is empty; leave the setting out to run unsigned, or set a long random string")
    if value != value.strip():
        raise ConfigError(f"{key}: starts or ends with whitespace, which producers and workers could disagree on")
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{key}: is too short; use at least {MIN_SECRET_LENGTH} characters, e.g. the output "
                          "of `openssl rand -hex 32`")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{key}: is not valid UTF-8 text") from None
    return value


def _parse_pass_env(key: str, value: Any) -> tuple[str, ...]:
    return _name_list(key, value, _ENV_VARIABLE_NAME, "environment variable name (A-Z a-z 0-9 _)")


def _name_list(key: str, value: Any, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    """A list of names (or one comma-separated text of them, as the environment gives it), each matching
    `pattern`; ConfigError names one that does not, as not a `what`."""
    names = [name.strip() for name in value.split(",")] if isinstance(value, str) else value
    if isinstance(names, tuple):
        names = list(names)
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{key}: expected a list of names")
    names = [name for name in names if name]
    for name in names:
        if not pattern.match(name):
            raise ConfigError(f"{key}: {name!r} is not an {what}")
    return tuple(names)


_ENV_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def _parse_commands(key: str, value: Any) -> dict[str, tuple[str, ...]]:
    from pheanq.description import COMMAND_NAME

    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table of name = [argv, ...]")
    registry: dict[str, tuple[str, ...]] = {}
    for name, argv in value.items():
        if not COMMAND_NAME.match(name):
            raise ConfigError(f"{key}: {name!r} is not a valid command name (A-Z a-z 0-9 _ : . -)")
        if name.startswith("py:"):
            raise ConfigError(f"{key}: {name!r}: a command name starting with py: would read as a Python task")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
            raise ConfigError(f"{key}.{name}: expected a non-empty list of strings, the argv prefix")
        registry[name] = tuple(argv)
    return registry


def _python_section(section: Any) -> dict[str, Any]:
    """The `[python]` table of pheanq.toml as settings: imports, max_tasks_per_child, max_child_memory."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError("python: expected a table ([python] with imports = [...])")
    unknown = sorted(set(section) - set(_PYTHON_SECTION))
    if unknown:
        raise ConfigError(f"python: unknown setting {unknown[0]!r} (known: {', '.join(_PYTHON_SECTION)})")
    return {_PYTHON_SECTION[key]: value for key, value in section.items()}


# The keys of pheanq.toml's [python] table, and the settings they are.
_PYTHON_SECTION = {"imports": "python_imports", "max_tasks_per_child": "max_tasks_per_child",
                   "max_child_memory": "max_child_memory"}


def _web_section(section: Any) -> dict[str, Any]:
    """The `[web]` table of pheanq.toml: `[web.users.NAME]` tables of role and token."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError("web: expected a table ([web.users.NAME] with role and token)")
    unknown = sorted(set(section) - {"users"})
    if unknown:
        raise ConfigError(f"web: unknown setting {unknown[0]!r} (known: users)")
    return {"web_users": section["users"]} if "users" in section else {}


def _parse_web_users(key: str, value: Any) -> dict[str, WebUser]:
    """name -> {role, token} tables (pheanq.toml), or `name:role:token,...` (PHEANQ_WEB_USERS). Messages name
    the user, never the token."""
    if isinstance(value, str):
        entries: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, _, rest = item.partition(":")
            role, _, token = rest.partition(":")
            entries[name] = {"role": role, "token": token}
        value = entries
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table of name = {{role, token}}")
    users: dict[str, WebUser] = {}
    for name, entry in value.items():
        if not _USER_NAME.match(name):
            raise ConfigError(f"{key}: {name!r} is not a user name (1-64 of A-Z a-z 0-9 _ . @ -)")
        if not isinstance(entry, dict) or set(entry) != {"role", "token"}:
            raise ConfigError(f"{key}.{name}: expected role and token (role = \"read\" or \"admin\")")
        if entry["role"] not in WEB_ROLES:
            raise ConfigError(f"{key}.{name}: role {entry['role']!r} is not one of {', '.join(WEB_ROLES)}")
        users[name] = WebUser(entry["role"], _parse_secret(f"{key}.{name}.token", entry["token"]))
    tokens = [user.token for user in users.values()]
    if len(set(tokens)) != len(tokens):
        raise ConfigError(f"{key}: two users have the same token; give each its own")
    return users


_USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}\Z")


def _parse_imports(key: str, value: Any) -> tuple[str, ...]:
    return _name_list(key, value, _MODULE_NAME, "importable module name (e.g. myapp.tasks)")


_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


_PARSERS = {
    "database_url": _parse_database_url,
    "beanstalkd": _parse_servers,
    "default_tube": _parse_tube,
    "commands": _parse_commands,
    "log_worker_output_on_failure": _parse_bool,
    "log_worker_output_on_success": _parse_bool,
    "max_log_bytes": _parse_positive_int,
    "run_dir": _parse_directory,
    "secret": _parse_secret,
    "pass_env": _parse_pass_env,
    "python_imports": _parse_imports,
    "max_tasks_per_child": _parse_positive_int,
    "max_child_memory": _parse_positive_int,
    "web_users": _parse_web_users,
    "limits": parse_limits,
}

_ENV_NAMES = {
    "database_url": "PHEANQ_DATABASE_URL",
    "beanstalkd": "PHEANQ_BEANSTALKD",
    "default_tube": "PHEANQ_TUBE",
    "log_worker_output_on_failure": "PHEANQ_LOG_WORKER_OUTPUT_ON_FAILURE",
    "log_worker_output_on_success": "PHEANQ_LOG_WORKER_OUTPUT_ON_SUCCESS",
    "max_log_bytes": "PHEANQ_MAX_LOG_BYTES",
    "run_dir": "PHEANQ_RUN_DIR",
    "secret": "PHEANQ_SECRET",
    "pass_env": "PHEANQ_PASS_ENV",
    "python_imports": "PHEANQ_PYTHON_IMPORTS",
    "max_tasks_per_child": "PHEANQ_MAX_TASKS_PER_CHILD",
    "max_child_memory": "PHEANQ_MAX_CHILD_MEMORY",
    "web_users": "PHEANQ_WEB_USERS",
}
