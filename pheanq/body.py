"""The job body: what travels through beanstalkd for a task, its JSON codec, and its HMAC signature.

A job is only a pointer to its task's row (`task_id` and the row's `nonce`) plus the description, for
inspection; the row is the truth. The same module writes a body (the dispatcher, when it puts a job) and
reads it (the worker, when it reserves one; the reconciler, when it asks whose a job is).

Signatures: an HMAC-SHA256 lets a worker refuse jobs its producers did not make.

beanstalkd has no authentication, so anyone who reaches its port can put a job. With a secret
configured, producers sign each body and workers run only bodies whose signature checks out.

The format keeps a signed body plain, readable JSON. An unsigned body is a compact JSON object::

    {"pheanq":1,"task_id":42,"nonce":"<16 lowercase hex digits>","description":{...}}

Its signed form is the same bytes with the closing ``}`` replaced by one last member::

    {"pheanq":1,"task_id":42,"nonce":"...","description":{...},"hmac":"<64 lowercase hex digits>"}

The nonce is random, fixed when the row is inserted: a job names one row, not whichever row holds its id
(after a database is restored, or re-created, an id can name another task). A body without one (written
by a pheanq older than the rows' nonces) names only a row that has none.

The MAC is HMAC-SHA256, keyed with the secret's UTF-8 bytes, over the unsigned bytes exactly: the
signed body with its final ``,"hmac":"..."}`` replaced by ``}``. It covers the bytes as they were
written, never a re-serialisation of parsed JSON, so nothing depends on how a JSON library orders
keys or escapes text. The task id and nonce lie inside those bytes: a signed body cannot be re-pointed at
another task. Any other program can produce the same bytes (serialise, HMAC, splice in the member).

Only this exact trailing form counts as a signature: lowercase hex, no spaces. Signatures are compared
in constant time, and no message here ever carries the secret or the MAC a body should have had.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

from pheanq.description import TaskDescription
from pheanq.errors import InvalidInput, MalformedBody, Unsigned, WrongSignature
from pheanq.limits import MAX_BODY_BYTES, MAX_TASK_ID
from pheanq.python_call import description_from_data

BODY_VERSION = 1
FIELD = "hmac"
_MEMBER = f',"{FIELD}":"'.encode()
# What signing adds to a body: `,"hmac":"` and 64 hex digits and `"`; the body's own `}` still closes it.
SIGNATURE_BYTES = len(_MEMBER) + 64 + 1
_SIGNED = re.compile(rb"(?s)\A(\{.+)" + re.escape(_MEMBER) + rb'([0-9a-f]{64})"\}\Z')
# An `hmac` member closing the body, in any form: what a signature that is not ours looks like.
_ANY_HMAC = re.compile(rb'"hmac"\s*:\s*(?:"[^"]*"|[^,{}\[\]"\s]*)\s*\}\s*')
NONCE_BYTES = 8
_NONCE = re.compile(r"[0-9a-f]{1,32}\Z")


@dataclass(frozen=True)
class JobBody:
    """What travels through beanstalkd: a pointer to the row, plus the description for inspection."""

    task_id: int
    description: TaskDescription
    nonce: str | None = None


def new_nonce() -> str:
    """The identity a new task row gets, and its jobs carry."""
    return secrets.token_hex(NONCE_BYTES)


def encode_body(task_id: int, description: TaskDescription, secret: str | None = None,
                nonce: str | None = None, data: str | None = None) -> bytes:
    """The job body for a task (the row with `task_id` and `nonce`); signed when a secret is given. `data` is the
    description as encode_data wrote it, when the caller has it already: it is not encoded again."""
    head: dict[str, object] = {"pheanq": BODY_VERSION, "task_id": task_id}
    if nonce is not None:
        head["nonce"] = nonce
    described = encode_data(description) if data is None else data
    # The same text as one json.dumps of the whole, the description last: the head, then the description.
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False)[:-1] + ',"description":' + described + "}"
    body = text.encode()
    if secret is not None:
        body = sign(body, secret)
    if len(body) > MAX_BODY_BYTES:
        raise InvalidInput(f"the task description is {len(body)} bytes as a job body; beanstalkd takes at "
                           f"most {MAX_BODY_BYTES}: pass an id and load the data in the command instead")
    return body


def decode_body(raw: bytes, secret: str | None = None) -> JobBody:
    """Parse a job body, or raise MalformedBody saying what is wrong with it.

    With a secret, only a body signed with it is read: its signature is checked on the raw bytes
    first, and what is parsed is exactly the bytes the signature covers. Without one, a signed
    body's `hmac` is ignored, so producers can start signing before workers start checking.
    """
    if len(raw) > MAX_BODY_BYTES + SIGNATURE_BYTES:
        # pheanq never writes one this big (a beanstalkd with a larger -z lets other clients put it).
        raise MalformedBody(f"too big: {len(raw)} bytes, a pheanq job body has at most "
                            f"{MAX_BODY_BYTES + SIGNATURE_BYTES} ({_preview(raw)})")
    payload = raw if secret is None else _verified(raw, secret)
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise MalformedBody(f"not JSON ({_preview(raw)})") from None
    except RecursionError:
        raise MalformedBody(f"JSON nested too deeply ({_preview(raw)})") from None
    version = data.get("pheanq") if isinstance(data, dict) else None
    if type(version) is not int or version != BODY_VERSION:  # not true, not 1.0
        raise MalformedBody(f"not a pheanq job body ({_preview(raw)})")
    task_id = data.get("task_id")
    if not isinstance(task_id, int) or isinstance(task_id, bool) or not 0 < task_id <= MAX_TASK_ID:
        raise MalformedBody(f"task_id is not a positive integer ({_preview(raw)})")
    nonce = data.get("nonce")
    if nonce is not None and not (isinstance(nonce, str) and _NONCE.match(nonce)):
        raise MalformedBody(f"task {task_id}: nonce is not 1-32 lowercase hex digits ({_preview(raw)})")
    try:
        description = description_from_data(data.get("description", {}))
    except InvalidInput as error:
        raise MalformedBody(f"task {task_id}: {error}") from None
    return JobBody(task_id, description, nonce)


def encode_data(description: TaskDescription) -> str:
    """The description as the row's `data` column holds it."""
    return json.dumps(description.to_data(), separators=(",", ":"), ensure_ascii=False)


def decode_data(text: str) -> TaskDescription:
    try:
        return description_from_data(json.loads(text))
    except ValueError as error:
        raise InvalidInput(f"stored task data is not valid: {error}") from None


def sign(body: bytes, secret: str) -> bytes:
    """The signed form of `body`, a compact, non-empty JSON object as `encode_body` writes it."""
    if not (body.startswith(b"{") and body.endswith(b"}") and len(body) > 2):
        raise ValueError("only a non-empty JSON object can be signed")
    return body[:-1] + _MEMBER + mac(body, secret).encode() + b'"}'


def verify(raw: bytes, secret: str) -> bytes:
    """The unsigned body, if `raw` is signed with `secret`; else raise Unsigned or WrongSignature."""
    signed = _SIGNED.match(raw)
    if signed is None:
        last = raw.rfind(b'"hmac"')
        if last >= 0 and _ANY_HMAC.fullmatch(raw, last):
            raise WrongSignature(f"its {FIELD} is not 64 lowercase hex digits closing the body")
        raise Unsigned("the body carries no signature")
    body = signed.group(1) + b"}"
    if not hmac.compare_digest(mac(body, secret).encode(), signed.group(2)):
        raise WrongSignature("the body was changed after it was signed, or signed with another secret")
    return body


def mac(body: bytes, secret: str) -> str:
    """HMAC-SHA256 of `body` keyed with `secret`, as lowercase hex."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _verified(raw: bytes, secret: str) -> bytes:
    try:
        return verify(raw, secret)
    except Unsigned:
        raise MalformedBody(f"unsigned job body: a secret is configured, so every job must be signed "
                            f"({_preview(raw)})") from None
    except WrongSignature as error:
        # The message says why, never what the signature should have been.
        raise MalformedBody(f"wrong signature: {error} ({_preview(raw)})") from None


def _preview(raw: bytes, limit: int = 60) -> str:
    text = raw[:limit].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(raw) > limit else "")
