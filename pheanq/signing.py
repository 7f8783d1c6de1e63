"""Signed job bodies: an HMAC-SHA256 that lets a worker refuse jobs its producers did not make.

beanstalkd has no authentication, so anyone who reaches its port can put a job. With a secret
configured, producers sign each body and workers run only bodies whose signature checks out.

The format keeps a signed body plain, readable JSON. An unsigned body is a compact JSON object::

    {"pheanq":1,"task_id":42,"description":{...}}

Its signed form is the same bytes with the closing ``}`` replaced by one last member::

    {"pheanq":1,"task_id":42,"description":{...},"hmac":"<64 lowercase hex digits>"}

The MAC is HMAC-SHA256, keyed with the secret's UTF-8 bytes, over the unsigned bytes exactly: the
signed body with its final ``,"hmac":"..."}`` replaced by ``}``. It covers the bytes as they were
written, never a re-serialisation of parsed JSON, so nothing depends on how a JSON library orders
keys or escapes text. The task id lies inside those bytes: a signed body cannot be re-pointed at
another task. Any other program can produce the same bytes (serialise, HMAC, splice in the member).

Only this exact trailing form counts as a signature: lowercase hex, no spaces. Signatures are compared
in constant time, and no message here ever carries the secret or the MAC a body should have had.
"""

from __future__ import annotations

import hashlib
import hmac
import re

FIELD = "hmac"
_MEMBER = f',"{FIELD}":"'.encode()
# What signing adds to a body: `,"hmac":"` and 64 hex digits and `"`; the body's own `}` still closes it.
SIGNATURE_BYTES = len(_MEMBER) + 64 + 1
_SIGNED = re.compile(rb"(?s)\A(\{.+)" + re.escape(_MEMBER) + rb'([0-9a-f]{64})"\}\Z')
# An `hmac` member closing the body, in any form: what a signature that is not ours looks like.
_ANY_HMAC = re.compile(rb'"hmac"\s*:\s*(?:"[^"]*"|[^,{}\[\]"\s]*)\s*\}\s*')


class SignatureError(ValueError):
    """A body a worker with a secret must not run."""


class Unsigned(SignatureError):
    """The body carries no signature at all."""


class WrongSignature(SignatureError):
    """The body carries a signature, but not a valid one for this secret."""


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
