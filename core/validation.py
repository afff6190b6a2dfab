"""Refuse bad input before anything reaches the broker, and normalise the rest into an EmailJob."""

import base64
import binascii
import mimetypes
import os
import re
from collections.abc import Iterable, Mapping
from email.headerregistry import Address
from email.utils import getaddresses
from functools import lru_cache
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email

from emailq.config import Settings
from emailq.core.errors import InvalidEmail
from emailq.core.job import (
    BREAKING,
    PRIORITIES,
    Attachment,
    EmailJob,
    custom_header_problem,
    header_problem,
)
from emailq.core.rendering import render

KEYWORDS = frozenset(
    {
        "to", "subject", "text", "html", "cc", "bcc", "reply_to", "headers",
        "attachments", "priority", "idempotency_key", "template", "context", "batch_id",
    }
)  # fmt: skip

# Headers the worker writes itself; letting callers set them would allow spoofing
# or break the message (a second From, a Bcc header, a wrong Content-Type).
RESERVED_HEADERS = frozenset(
    {
        "from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "sender",
        "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
        "return-path", "received",
    }
)  # fmt: skip
HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII except ':'
# NUL, and every character str.splitlines() breaks a line at: the email package folds
# or splits headers at them too, so any of them in a header could smuggle in another.
FORBIDDEN = ("\r", "\n", "\0", *BREAKING)
# A bare addr-spec (no display name, comment, quoting or list) needs no parsing first.
# RFC 5322 dot-atom: the ASCII local parts email-validator accepts unchanged.
DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
BARE = re.compile(r"[^\s<>()\[\]\\,;:\"]+")
MAX_IDEMPOTENCY_KEY = 200


def _no_breaks(field: str, value: str) -> str:
    if not isinstance(value, str):
        raise InvalidEmail(f"{field}: expected a string, got {type(value).__name__}")
    for char in FORBIDDEN:
        if char in value:
            what = "a NUL character" if char == "\0" else "a line break"
            raise InvalidEmail(
                f"{field}: contains {what} ({char!r}); header values and addresses cannot "
                "contain line breaks or NUL characters"
            )
    if problem := header_problem(value):
        raise InvalidEmail(f"{field}: contains {problem}")
    return value


def _address(field: str, value: Any, *, check_deliverability: bool) -> str:
    """Validate one address, keeping a display name: ``"Ann <ann@example.com>"``."""
    value = _no_breaks(field, value).strip()
    parsed = [("", value)] if BARE.fullmatch(value) else getaddresses([value])
    if len(parsed) != 1:
        raise InvalidEmail(f"{field}: {value!r} holds {len(parsed)} addresses; pass a list")
    name, addr = parsed[0]
    try:
        addr = _validated(addr or value, check_deliverability)
    except EmailNotValidError as exc:
        raise InvalidEmail(f"{field}: {value!r} is not a valid address: {exc}") from None
    # Re-quoted by Address, so validating the result again gives the same string.
    return str(Address(display_name=name, addr_spec=addr)) if name else addr


def _validated(addr: str, check_deliverability: bool) -> str:
    """email-validator's normalised ASCII form; its domain verdict is cached per domain."""
    local, at, domain = addr.rpartition("@")
    if at and DOT_ATOM.fullmatch(local) and len(local) <= 64 and len(addr) <= 254:
        return f"{local}@{_domain(domain, check_deliverability)}"
    checked = validate_email(addr, allow_smtputf8=False, check_deliverability=check_deliverability)
    return checked.ascii_email or checked.normalized


@lru_cache(maxsize=4096)
def _domain(domain: str, check_deliverability: bool) -> str:
    # A bulk send repeats a few domains thousands of times; IDNA checks cost most of the work.
    checked = validate_email(
        f"postmaster@{domain}", allow_smtputf8=False, check_deliverability=check_deliverability
    )
    return (checked.ascii_email or checked.normalized).partition("@")[2]


def _addresses(field: str, value: Any, *, required: bool, settings: Settings) -> tuple[str, ...]:
    if value is None or value == [] or value == ():
        if required:
            raise InvalidEmail(f"{field}: at least one recipient is required")
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Iterable) or isinstance(items, Mapping | bytes):
        raise InvalidEmail(f"{field}: expected an address or a list of addresses")
    check = settings.email_check_deliverability
    return tuple(
        _address(f"{field}[{i}]" if len(items) > 1 else field, item, check_deliverability=check)
        for i, item in enumerate(items)
    )


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidEmail("headers: expected a mapping of header name to value")
    headers: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise InvalidEmail(f"headers: {name!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidEmail(f"headers: {name!r} is set by the worker; use the keyword instead")
        if problem := custom_header_problem(name):
            raise InvalidEmail(f"headers: {name!r} is {problem}")
        headers[name] = _no_breaks(f"headers[{name!r}]", text)
    return headers


def _attachment(index: int, item: Any) -> Attachment:
    field = f"attachments[{index}]"
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        if not path.is_file():
            raise InvalidEmail(f"{field}: no such file: {path}")
        mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        # A backslash is legal in a POSIX file name but not in the bare name the wire form allows.
        filename = _no_breaks(f"{field}.filename", path.name).replace("\\", "_")
        return Attachment(filename, path.read_bytes(), mimetype)
    if not isinstance(item, Mapping):
        raise InvalidEmail(f"{field}: expected a file path or {{'filename', 'content'}}")
    unknown = set(item) - {"filename", "content", "content_b64", "mimetype"}
    if unknown:
        raise InvalidEmail(f"{field}: unknown key(s) {sorted(unknown)}")
    filename = _no_breaks(f"{field}.filename", item.get("filename"))
    if not filename or "/" in filename or "\\" in filename:
        raise InvalidEmail(f"{field}.filename: must be a bare file name, got {filename!r}")
    if "content" in item:
        content = item["content"]
        if isinstance(content, str):
            content = content.encode("utf-8")
        if not isinstance(content, bytes | bytearray | memoryview):
            raise InvalidEmail(f"{field}.content: expected bytes, got {type(content).__name__}")
        content = bytes(content)
    elif "content_b64" in item:
        try:
            content = base64.b64decode(item["content_b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidEmail(f"{field}.content_b64: not valid base64") from None
    else:
        raise InvalidEmail(f"{field}: needs 'content' (bytes)")
    guessed = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    mimetype = _no_breaks(f"{field}.mimetype", item.get("mimetype") or guessed)
    if not re.fullmatch(r"[\w.+-]+/[\w.+-]+", mimetype, re.ASCII):
        raise InvalidEmail(f"{field}.mimetype: {mimetype!r} is not a type/subtype")
    return Attachment(filename, content, mimetype)


def _file_size(item: Any) -> int:
    if isinstance(item, str | os.PathLike) and Path(item).is_file():
        return Path(item).stat().st_size
    return 0


def _attachments(value: Any, *, limit: int, read_files: bool) -> tuple[Attachment, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes | Mapping | os.PathLike) or not isinstance(value, Iterable):
        raise InvalidEmail("attachments: expected a list of file paths or dicts")
    items = list(value)
    if not read_files and any(isinstance(item, str | os.PathLike) for item in items):
        raise InvalidEmail("attachments: a file path is accepted only from the application's call")
    # Check files on disk by size before reading them, so an oversized file is refused cheaply.
    if sum(_file_size(item) for item in items) > limit:
        raise InvalidEmail(f"attachments: total size exceeds MAX_ATTACHMENT_BYTES ({limit} bytes)")
    attachments = tuple(_attachment(i, item) for i, item in enumerate(items))
    total = sum(len(a.content) for a in attachments)
    if total > limit:
        raise InvalidEmail(
            f"attachments: total size {total} bytes exceeds MAX_ATTACHMENT_BYTES ({limit} bytes)"
        )
    return attachments


def _body(field: str, value: Any, *, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEmail(f"{field}: expected a string, got {type(value).__name__}")
    if "\0" in value:
        raise InvalidEmail(f"{field}: contains NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEmail(f"{field}: contains a lone surrogate, which is not text") from None
    # Characters first (cheap), then bytes: a body of 4-byte characters is 4x its length.
    if len(value) > limit or len(value.encode("utf-8", "surrogatepass")) > limit:
        raise InvalidEmail(f"{field}: larger than MAX_BODY_BYTES ({limit} bytes)")
    return value or None


def validate_job(
    kwargs: Mapping[str, Any], settings: Settings, *, read_files: bool = False
) -> EmailJob:
    """Return the normalised job for ``enqueue_email``'s keywords, or raise ``InvalidEmail``.

    ``read_files=True`` lets an attachment be a file path, read here. Only the
    application's own call may do that; nothing taken from a queue ever does.
    """
    unknown = set(kwargs) - KEYWORDS
    if unknown:
        raise InvalidEmail(
            f"unknown keyword(s) {sorted(unknown)}; enqueue_email accepts {sorted(KEYWORDS)}"
        )
    if kwargs.get("template") is not None:
        if kwargs.get("text") is not None or kwargs.get("html") is not None:
            raise InvalidEmail("template: give a template or text/html, not both")
        rendered = render(kwargs["template"], kwargs.get("context"))
        kwargs = {**kwargs, **rendered, "subject": kwargs.get("subject") or rendered["subject"]}
    elif kwargs.get("context") is not None:
        raise InvalidEmail("context: given without a template")
    if "subject" not in kwargs:
        raise InvalidEmail("subject: required")
    text = _body("text", kwargs.get("text"), limit=settings.max_body_bytes)
    html = _body("html", kwargs.get("html"), limit=settings.max_body_bytes)
    if text is None and html is None:
        raise InvalidEmail("text/html: no body; give text, html or both")
    priority = kwargs.get("priority") or "normal"
    if priority not in PRIORITIES:
        raise InvalidEmail(f"priority: {priority!r} is not one of {list(PRIORITIES)}")
    key = kwargs.get("idempotency_key")
    if key is not None and (
        not _no_breaks("idempotency_key", key) or len(key) > MAX_IDEMPOTENCY_KEY
    ):
        raise InvalidEmail(f"idempotency_key: must be 1-{MAX_IDEMPOTENCY_KEY} characters")
    batch_id = kwargs.get("batch_id")
    if batch_id is not None and (not _no_breaks("batch_id", batch_id) or len(batch_id) > 64):
        raise InvalidEmail("batch_id: must be 1-64 characters")
    return EmailJob(
        to=_addresses("to", kwargs.get("to"), required=True, settings=settings),
        subject=_no_breaks("subject", kwargs["subject"]),
        text=text,
        html=html,
        cc=_addresses("cc", kwargs.get("cc"), required=False, settings=settings),
        bcc=_addresses("bcc", kwargs.get("bcc"), required=False, settings=settings),
        reply_to=_addresses("reply_to", kwargs.get("reply_to"), required=False, settings=settings),
        headers=_headers(kwargs.get("headers")),
        attachments=_attachments(
            kwargs.get("attachments"), limit=settings.max_attachment_bytes, read_files=read_files
        ),
        priority=priority,
        idempotency_key=key,
        batch_id=batch_id,
    )
