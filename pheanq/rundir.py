"""Private run directories and the files in them, safe against another local user.

A run directory holds lock and pid files that decide which processes run and which get signalled, so
only its owner may be able to write it: pheanq makes it 0700, and refuses one that another user owns or
that group or others can write (whoever can write a directory can put a symlink, a squatted lock or a
forged record in it). Files in it are opened without following a symlink, and one that is not a plain
file of this user's own, with one link, is refused rather than written or truncated.

A process named in such a file is trusted only once it is verified to be the one that wrote it: same
owner, same start time, same command line (pheanq.process_identity), so a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from pheanq.errors import ConfigError, UnsafePath


def default_run_dir() -> Path:
    """/run/pheanq for root; else $XDG_RUNTIME_DIR/pheanq, or ~/.local/state/pheanq/run without one.

    Never a fixed path in a directory every user can write (such as /tmp), where another user could
    make it first.
    """
    if os.geteuid() == 0:
        return Path("/run/pheanq")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "pheanq"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(_home(), ".local", "state")
    return Path(state) / "pheanq" / "run"


def private_directory(path: Path, fix: str) -> Path:
    """Make `path` (mode 0700, parents too) or check the one there; refuse another user's or a writable one.

    Every component of the path is looked at without following it first (`_walk`): a symbolic link of
    another user's, or a directory above that another user owns or can write, decides where pheanq
    writes and is refused too. Returns the path with its symbolic links resolved, so what is opened in
    it is what was checked. `fix` says what the user can do instead, e.g. "set run_dir / PHEANQ_RUN_DIR".
    """
    try:
        real, info = _walk(path, fix)
    except OSError as error:
        raise UnsafePath(f"run directory {path}: {error.strerror or error}; {fix}") from None
    _check_private_directory(path, info, fix)
    return real


def open_private_file(path: Path, create: bool = True, exclusive: bool = False) -> int:
    """A read-write descriptor of this user's plain file `path`, created 0600 if missing, never truncated.

    A symlink (dangling or not), another user's file or a file with a second hard link is refused
    with `UnsafePath`; a missing file with `create=False` raises FileNotFoundError.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if create:
        flags |= os.O_CREAT | (os.O_EXCL if exclusive else 0)
    try:
        descriptor = os.open(path, flags, 0o600)
    except OSError as error:
        if isinstance(error, FileNotFoundError) and not create:
            raise
        if os.path.islink(path):
            raise UnsafePath(f"{path} is a symbolic link, not a file pheanq made: remove it") from None
        raise UnsafePath(f"{path}: {error.strerror or error}") from None
    info = os.fstat(descriptor)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a plain file"
    elif info.st_uid != os.geteuid():
        problem = f"belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()})"
    elif info.st_nlink != 1:
        problem = f"has {info.st_nlink} hard links"
    if problem is not None:
        os.close(descriptor)
        raise UnsafePath(f"{path} {problem}, so it is not a file pheanq made: remove it")
    os.set_blocking(descriptor, True)
    return descriptor


def _check_private_directory(path: Path, info: os.stat_result, fix: str) -> None:
    """Refuse a directory that is not this user's own, or that group or others can write."""
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"run directory {path} is not a directory; {fix}")
    if info.st_uid != os.geteuid():
        raise UnsafePath(f"run directory {path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}): "
                         f"another user could plant files in it; remove it, or {fix}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePath(f"run directory {path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}):"
                         f" another user could plant files in it; run `chmod 700 {path}`, or {fix}")


def _walk(path: Path, fix: str) -> tuple[Path, os.stat_result]:
    """Resolve `path` one component at a time, as the kernel would, making what is missing (0700).

    Each directory passed through must be this user's or root's and not writable by group or others
    unless sticky (like /tmp, where no one can rename another's entry); each symbolic link must be this
    user's or root's (root's /var/run -> /run is followed, another user's link is not). A directory is
    made only in a directory that passed. Returns the resolved path and the lstat of its last directory.
    """
    pending = list(reversed(Path(os.getcwd(), path).parts[1:]))
    current = Path("/")
    info = os.lstat(current)
    links = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent
            info = os.lstat(current)
            continue
        candidate = current / name
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # made at this instant by someone else: checked below
                os.mkdir(candidate, 0o700)
            info = os.lstat(candidate)
        if stat.S_ISLNK(info.st_mode):
            if info.st_uid not in (os.geteuid(), 0):
                raise UnsafePath(f"run directory {path}: {candidate} is a symbolic link of uid {info.st_uid}, "
                                 f"another user's, who chooses where it leads; remove it, or {fix}")
            links += 1
            if links > _MAX_SYMLINKS:
                raise UnsafePath(f"run directory {path}: too many levels of symbolic links; {fix}")
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path("/")
            pending.extend(reversed(target.parts[1:] if target.is_absolute() else target.parts))
            continue
        if pending:
            _check_passed_through(path, candidate, info, fix)
        current = candidate
    return current, info


# As Linux's own limit on symbolic links followed in one path (ELOOP).
_MAX_SYMLINKS = 40


def _check_passed_through(path: Path, directory: Path, info: os.stat_result, fix: str) -> None:
    """Refuse a directory above the run directory that another user could rearrange."""
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"run directory {path}: {directory} is not a directory; {fix}")
    if info.st_uid not in (os.geteuid(), 0):
        raise UnsafePath(f"run directory {path}: {directory} belongs to uid {info.st_uid}, who could replace what "
                         f"is in it; {fix}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise UnsafePath(f"run directory {path}: {directory} is writable by group or others without the sticky bit "
                         f"(mode {stat.S_IMODE(info.st_mode):04o}), who could replace what is in it; {fix}")


def _home() -> str:
    home = os.path.expanduser("~")
    if home == "~" or not os.path.isabs(home):
        raise ConfigError("no home directory to keep the run directory in; set run_dir / PHEANQ_RUN_DIR")
    return home
