"""``producer.validation.validate_job``: every refusal names its field; the rest is normalised."""

import base64
import email.policy
import json
import os
import re
from pathlib import Path

import pytest

from emailq.config import load_settings
from emailq.core.errors import InvalidEmail
from emailq.core.job import Attachment, EmailJob
from emailq.core.validation import validate_job as validate


def validate_job(kwargs, settings):
    """Validation as the application's own call runs it: file paths may be read."""
    return validate(kwargs, settings, read_files=True)


@pytest.fixture(scope="module")
def settings():
    return load_settings(
        _env_file=os.devnull, email_check_deliverability=False, max_attachment_bytes=20 * 1024**2
    )


@pytest.fixture(scope="module")
def small_limit():
    return load_settings(_env_file=os.devnull, max_attachment_bytes=10)


def job_kwargs(**changes):
    kwargs = {"to": "ann@example.com", "subject": "Hello", "text": "Hi Ann"}
    kwargs.update(changes)
    return {key: value for key, value in kwargs.items() if value is not ...}


def refused(settings, field: str, **changes) -> str:
    """Validate and return the refusal's message, asserting that it starts by naming ``field``."""
    with pytest.raises(InvalidEmail) as excinfo:
        validate_job(job_kwargs(**changes), settings)
    message = str(excinfo.value)
    assert re.match(rf"{re.escape(field)}(?![\w])", message), message
    return message


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_invalid_email_is_a_value_error():
    assert issubclass(InvalidEmail, ValueError)


# Refusals


@pytest.mark.parametrize("field", ["to", "cc", "bcc", "reply_to"])
@pytest.mark.parametrize("address", ["bad@", "no-at-sign", "a@localhost", "a@@example.com"])
def test_malformed_address_is_refused_naming_the_field(settings, field, address):
    refused(settings, field, **{field: address})


def test_malformed_address_in_a_list_is_named_by_position(settings):
    refused(settings, "cc[1]", cc=["ok@example.com", "bad@"])


def test_non_ascii_local_part_is_refused(settings):
    refused(settings, "to", to="jörg@example.com")


BREAKS = {
    "CR": "\r", "LF": "\n", "NUL": "\0", "VT": "\v", "FF": "\f", "FS": "\x1c", "GS": "\x1d",
    "RS": "\x1e", "NEL": "\x85", "LS": "\u2028", "PS": "\u2029",
}  # fmt: skip


def test_every_character_splitlines_breaks_at_is_covered():
    breakers = {c for c in map(chr, range(0x3000)) if len(f"a{c}b".splitlines()) > 1}
    assert breakers <= set(BREAKS.values())


INJECTION = "Bcc: victim@evil.example"


def _breaking(field: str, char: str) -> tuple[str, dict]:
    """The field name the refusal must give, and the keywords that put ``char`` into it."""
    if field in ("to", "cc", "bcc", "reply_to"):
        return field, {field: f"x@example.com{char}{INJECTION}"}
    if field == "subject":
        return field, {"subject": f"Hello{char}{INJECTION}"}
    if field == "headers":
        return "headers", {"headers": {"X-Tag": f"a{char}{INJECTION}"}}
    if field == "filename":
        attachment = {"filename": f"a{char}.txt", "content": b"x"}
        return "attachments[0].filename", {"attachments": [attachment]}
    if field == "mimetype":
        attachment = {"filename": "a.txt", "content": b"x", "mimetype": f"text/plain{char}"}
        return "attachments[0].mimetype", {"attachments": [attachment]}
    assert field == "idempotency_key"
    return field, {"idempotency_key": f"key{char}1"}


@pytest.mark.parametrize("char", BREAKS.values(), ids=BREAKS.keys())
@pytest.mark.parametrize(
    "field",
    [
        "subject",
        "to",
        "cc",
        "bcc",
        "reply_to",
        "headers",
        "filename",
        "mimetype",
        "idempotency_key",
    ],
)
def test_line_break_or_nul_is_refused_naming_the_field(settings, field, char):
    named, changes = _breaking(field, char)
    refused(settings, named, **changes)


def test_line_break_in_an_attachment_file_name_on_disk_is_refused(settings, tmp_path):
    path = write(tmp_path / "evil\nname.txt", b"x")
    refused(settings, "attachments[0].filename", attachments=[str(path)])


@pytest.mark.parametrize("field", ["text", "html"])
def test_nul_in_a_body_is_refused(settings, field):
    refused(settings, field, **{field: "a\0b"})


@pytest.mark.parametrize("name", ["Bad Name", "X:Y", "", "X-Ünïcode"])
def test_invalid_header_name_is_refused(settings, name):
    refused(settings, "headers", headers={name: "value"})


@pytest.mark.parametrize(
    "name", ["Bcc", "From", "Content-Type", "bcc", "MESSAGE-ID", "Reply-To", "Sender"]
)
def test_header_set_by_the_worker_is_refused(settings, name):
    refused(settings, "headers", headers={name: "value"})


@pytest.mark.parametrize(
    "bodies",
    [{"text": ...}, {"text": "", "html": ""}, {"text": None, "html": None}],
    ids=["neither", "both-empty", "both-none"],
)
def test_job_without_a_body_is_refused(settings, bodies):
    refused(settings, "text/html", **bodies)


@pytest.mark.parametrize("priority", ["urgent", "low", "HIGH"])
def test_unknown_priority_is_refused(settings, priority):
    refused(settings, "priority", priority=priority)


def test_unknown_keyword_is_refused_and_named(settings):
    message = refused(settings, "unknown keyword", recipient="bob@example.com")
    assert "recipient" in message


def test_missing_subject_is_refused(settings):
    refused(settings, "subject", subject=...)


@pytest.mark.parametrize("to", [..., None, [], (), ""], ids=repr)
def test_missing_or_empty_to_is_refused(settings, to):
    refused(settings, "to", to=to)


@pytest.mark.parametrize("idempotency_key", ["", "k" * 201])
def test_idempotency_key_must_be_1_to_200_characters(settings, idempotency_key):
    refused(settings, "idempotency_key", idempotency_key=idempotency_key)


WELCOME = {
    "username": "Ann",
    "product": "Acme",
    "verify_url": "https://x.example/v",
    "valid_hours": 24,
}


def test_a_template_together_with_a_body_is_refused(settings):
    refused(settings, "template", template="welcome", context=WELCOME)


def test_a_context_without_a_template_is_refused(settings):
    refused(settings, "context", context={"name": "Ann"})


def test_a_template_missing_a_variable_is_refused_naming_it(settings):
    context = {k: v for k, v in WELCOME.items() if k != "verify_url"}
    message = refused(
        settings, "context", template="welcome", context=context, text=None, subject=...
    )
    assert "verify_url" in message


def test_an_unknown_template_is_refused(settings):
    refused(settings, "template", template="no_such_template", text=None, subject=...)


def test_a_template_renders_subject_text_and_inlined_autoescaped_html(settings):
    context = {**WELCOME, "username": "<script>x</script>"}
    job = validate_job(
        job_kwargs(template="welcome", context=context, text=None, subject=...), settings
    )

    assert job.subject == "Welcome to Acme, <script>x</script>: please confirm your email"
    assert "https://x.example/v" in job.text
    assert "&lt;script&gt;" in job.html and "<script>" not in job.html
    assert "<style>" not in job.html and 'style="' in job.html  # CSS inlined for mail clients
    assert validate_job(job.to_dict(), settings) == job  # rendered once, at enqueue


# Attachments


def test_attachment_bytes_over_the_limit_are_refused(small_limit):
    message = refused(
        small_limit, "attachments", attachments=[{"filename": "a.bin", "content": b"x" * 11}]
    )
    assert "MAX_ATTACHMENT_BYTES" in message


def test_attachment_bytes_at_the_limit_are_accepted(small_limit):
    job = validate_job(
        job_kwargs(attachments=[{"filename": "a.bin", "content": b"x" * 10}]), small_limit
    )
    assert job.attachments[0].content == b"x" * 10


def test_attachment_file_over_the_limit_is_refused(small_limit, tmp_path):
    path = write(tmp_path / "big.bin", b"x" * 11)
    refused(small_limit, "attachments", attachments=[str(path)])


def test_attachments_over_the_limit_in_total_are_refused(small_limit, tmp_path):
    items = [
        {"filename": "a.bin", "content": b"x" * 6},
        {"filename": "b.bin", "content_b64": base64.b64encode(b"y" * 6).decode()},
    ]
    refused(small_limit, "attachments", attachments=items)


def test_attachment_files_over_the_limit_in_total_are_refused(small_limit, tmp_path):
    first = write(tmp_path / "a.bin", b"x" * 6)
    second = write(tmp_path / "b.bin", b"y" * 6)
    refused(small_limit, "attachments", attachments=[first, second])


def test_attachment_file_and_bytes_over_the_limit_in_total_are_refused(small_limit, tmp_path):
    path = write(tmp_path / "a.bin", b"x" * 6)
    refused(
        small_limit,
        "attachments",
        attachments=[path, {"filename": "b.bin", "content": b"y" * 6}],
    )


def test_attachment_path_that_does_not_exist_is_refused(settings, tmp_path):
    message = refused(settings, "attachments[0]", attachments=[str(tmp_path / "missing.pdf")])
    assert "missing.pdf" in message


def test_attachment_dict_without_content_is_refused(settings):
    refused(settings, "attachments[0]", attachments=[{"filename": "a.txt"}])


def test_attachment_with_invalid_base64_is_refused(settings):
    refused(
        settings,
        "attachments[0].content_b64",
        attachments=[{"filename": "a.bin", "content_b64": "not base64!"}],
    )


@pytest.mark.parametrize("filename", ["../etc/passwd", "dir\\a.txt", ""])
def test_attachment_filename_must_be_bare(settings, filename):
    refused(
        settings,
        "attachments[0].filename",
        attachments=[{"filename": filename, "content": b"x"}],
    )


@pytest.mark.parametrize("attachments", ["report.pdf", {"filename": "a", "content": b"x"}])
def test_attachments_must_be_a_list(settings, attachments):
    refused(settings, "attachments", attachments=attachments)


# Accepted input, normalised


def test_to_as_a_string_or_a_list_gives_a_tuple(settings):
    single = validate_job(job_kwargs(to="ann@example.com"), settings)
    several = validate_job(job_kwargs(to=["ann@example.com", "bob@example.com"]), settings)
    assert single.to == ("ann@example.com",)
    assert several.to == ("ann@example.com", "bob@example.com")


@pytest.mark.parametrize(
    "address",
    ["Ann Bé <ann@example.com>", '"Doe, J" <j@example.org>'],
)
def test_display_names_are_kept(settings, address):
    assert validate_job(job_kwargs(to=address), settings).to == (address,)


def test_quotes_around_a_plain_display_name_are_dropped(settings):
    assert validate_job(job_kwargs(to='"Ann" <ann@example.com>'), settings).to == (
        "Ann <ann@example.com>",
    )


def test_idn_domain_is_converted_to_punycode(settings):
    job = validate_job(job_kwargs(to="Jörg <jorg@bücher.example>", cc="a@bücher.example"), settings)
    assert job.to == ("Jörg <jorg@xn--bcher-kva.example>",)
    assert job.cc == ("a@xn--bcher-kva.example",)


@pytest.mark.parametrize("as_path", [str, Path], ids=["str", "Path"])
def test_attachment_from_a_file_path(settings, tmp_path, as_path):
    content = bytes(range(256)) * 4
    path = write(tmp_path / "report.pdf", content)
    job = validate_job(job_kwargs(attachments=[as_path(path)]), settings)
    assert job.attachments == (Attachment("report.pdf", content, "application/pdf"),)


def test_attachment_file_with_unknown_extension_is_octet_stream(settings, tmp_path):
    path = write(tmp_path / "data.xyzzy", b"\x00\x01")
    job = validate_job(job_kwargs(attachments=[path]), settings)
    assert job.attachments[0].mimetype == "application/octet-stream"


def test_attachment_bytes_without_mimetype_get_a_guessed_one(settings):
    job = validate_job(
        job_kwargs(attachments=[{"filename": "photo.png", "content": b"\x89PNG"}]), settings
    )
    assert job.attachments == (Attachment("photo.png", b"\x89PNG", "image/png"),)


def test_attachment_given_mimetype_is_kept(settings):
    item = {"filename": "data.bin", "content": b"{}", "mimetype": "application/json"}
    job = validate_job(job_kwargs(attachments=[item]), settings)
    assert job.attachments[0].mimetype == "application/json"


def test_attachment_content_b64_is_accepted(settings):
    content = bytes(range(256))
    item = {"filename": "blob.bin", "content_b64": base64.b64encode(content).decode("ascii")}
    job = validate_job(job_kwargs(attachments=[item]), settings)
    assert job.attachments[0].content == content


def test_html_only_job_is_accepted(settings):
    job = validate_job(job_kwargs(text=..., html="<p>Hi</p>"), settings)
    assert (job.text, job.html) == (None, "<p>Hi</p>")


def test_priority_defaults_to_normal(settings):
    assert validate_job(job_kwargs(), settings).priority == "normal"


# The wire form


@pytest.fixture
def full_job(settings, tmp_path) -> EmailJob:
    path = write(tmp_path / "notes.txt", "Grüße\n".encode())
    return validate_job(
        {
            "to": ["Ann Bé <ann@example.com>", '"Doe, J" <j@example.org>'],
            "subject": "Grüße — report",
            "text": "Hello\nWorld",
            "html": "<p>Hello <b>World</b></p>",
            "cc": "cc@bücher.example",
            "bcc": ["Hidden <hidden@example.net>"],
            "reply_to": "replies@example.com",
            "headers": {"X-Campaign": "spring ☀", "List-Id": "<news.example.com>"},
            "attachments": [
                path,
                {"filename": "résumé.pdf", "content": bytes(range(256)) * 3},
                {"filename": "raw", "content_b64": base64.b64encode(b"\0\1\2").decode()},
            ],
            "priority": "high",
            "idempotency_key": "order-42",
        },
        settings,
    )


def test_wire_form_is_json_serialisable(full_job):
    payload = json.loads(json.dumps(full_job.to_dict()))
    assert payload["to"] == list(full_job.to)
    assert payload["priority"] == "high"


def test_validating_the_wire_form_again_gives_the_same_job(settings, full_job):
    wire = json.loads(json.dumps(full_job.to_dict()))
    assert validate_job(wire, settings) == full_job


def test_validating_a_minimal_wire_form_again_gives_the_same_job(settings):
    job = validate_job(job_kwargs(), settings)
    assert validate_job(job.to_dict(), settings) == job


def test_from_dict_of_the_wire_form_gives_the_same_job(full_job):
    assert EmailJob.from_dict(json.loads(json.dumps(full_job.to_dict()))) == full_job


@pytest.mark.parametrize(
    "address", ['Ann "The Boss" Lee <ann@example.com>', "Back\\slash <b@example.com>"]
)
def test_display_name_with_quotes_or_backslash_survives_revalidation(settings, address):
    job = validate_job(job_kwargs(to=address), settings)
    assert validate_job(job.to_dict(), settings) == job


def test_escaped_quotes_in_a_quoted_display_name_are_understood(settings):
    job = validate_job(job_kwargs(to='"Ann \\"Boss\\"" <ann@example.com>'), settings)
    (address,) = email.policy.default.header_factory("To", job.to[0]).addresses
    assert (address.display_name, address.addr_spec) == ('Ann "Boss"', "ann@example.com")


def test_attachment_file_name_from_disk_survives_revalidation(settings, tmp_path):
    path = write(tmp_path / "a\\b.txt", b"x")
    job = validate_job(job_kwargs(attachments=[path]), settings)
    assert validate_job(job.to_dict(), settings) == job


def test_recipients_include_bcc_as_bare_addresses_each_once(settings):
    job = validate_job(
        job_kwargs(
            to=["Ann <ann@example.com>", "bob@example.com"],
            cc=["Bob Again <bob@example.com>", "carl@example.com"],
            bcc=["Dee <dee@example.com>", "ann@example.com"],
        ),
        settings,
    )
    assert job.recipients == [
        "ann@example.com",
        "bob@example.com",
        "carl@example.com",
        "dee@example.com",
    ]


def test_summary_contains_no_body_and_no_attachment_bytes(settings):
    secret = b"ATTACHMENT-SECRET-BYTES"
    job = validate_job(
        job_kwargs(
            text="TEXT-BODY-SECRET",
            html="<p>HTML-BODY-SECRET</p>",
            attachments=[{"filename": "a.bin", "content": secret}],
        ),
        settings,
    )
    shown = repr(job.summary())
    for hidden in ("TEXT-BODY-SECRET", "HTML-BODY-SECRET", "ATTACHMENT-SECRET-BYTES"):
        assert hidden not in shown
    assert base64.b64encode(secret).decode() not in shown
    assert "a.bin" in shown


@pytest.mark.parametrize(
    "address",
    [
        "ann@example.com", "Ann.B+tag@Example.COM", "a..b@example.com", ".a@example.com",
        "a.@example.com", "x@localhost", "x@exa_mple.com", "x@-bad.com", "x@bücher.de",
        "ü@example.com", "x@example", "x" * 65 + "@example.com", "o'neil@example.co.uk",
        "a@b.c", "a@123.123.123.123", "a@[1.2.3.4]", "user@mail.example.invalid",
        "a{b}@x.org", "a@test", "a@example.com.", "a@EXAMPLE.org", "a@@example.com",
    ],
)  # fmt: skip
def test_the_per_domain_cache_gives_email_validators_verdict(address):
    from email_validator import EmailNotValidError, validate_email

    from emailq.core.validation import _validated

    def verdict(check):
        try:
            return check()
        except EmailNotValidError:
            return "refused"

    expected = verdict(
        lambda: (lambda r: r.ascii_email or r.normalized)(
            validate_email(address, allow_smtputf8=False, check_deliverability=False)
        )
    )
    assert verdict(lambda: _validated(address, False)) == expected
    assert verdict(lambda: _validated(address, False)) == expected  # and again, from the cache


def test_a_file_path_is_never_read_outside_the_applications_call(settings, tmp_path):
    secret = tmp_path / "environ"
    secret.write_text("EMAIL_PASSWORD=hunter2")

    with pytest.raises(InvalidEmail, match="file path"):
        validate(job_kwargs(attachments=[str(secret)]), settings)


@pytest.mark.parametrize("field", ["text", "html"])
def test_a_body_over_max_body_bytes_is_refused_naming_the_limit(field):
    small = load_settings(_env_file=os.devnull, max_body_bytes=1000)

    assert validate_job(job_kwargs(**{field: "é" * 500}), small)  # 1000 bytes: at the limit
    with pytest.raises(InvalidEmail, match=f"{field}: larger than MAX_BODY_BYTES"):
        validate_job(job_kwargs(**{field: "é" * 501}), small)  # 501 characters, 1002 bytes


def test_a_wire_payload_naming_a_file_is_refused_without_reading_it(tmp_path):
    secret = tmp_path / "environ"
    secret.write_text("EMAIL_PASSWORD=hunter2")

    with pytest.raises(InvalidEmail, match="attachments"):
        EmailJob.from_dict(
            {"to": ["ann@example.com"], "subject": "s", "attachments": [str(secret)]}
        )


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "to",
        {"to": "ann@example.com", "subject": "s", "text": "t"},  # a bare string, not a list
        {"to": ["ann@example.com"], "subject": 7, "text": "t"},
        {"to": ["ann@example.com"], "subject": "s", "text": "t", "bogus": 1},
        {"to": ["ann@example.com"], "subject": "s", "headers": {"X-A": 1}},
        {"to": ["ann@example.com"], "subject": "s", "priority": "urgent"},
        {"to": [], "subject": "s", "text": "t"},
        {"to": ["ann@example.com"], "subject": "s"},  # no body
        {"to": ["ann@example.com"], "subject": "Hi\u2028Bcc: x@evil.example", "text": "t"},
        {"to": ["ann@example.com"], "subject": "s", "text": "t", "headers": {"X-A": "a\x85b"}},
        {"to": ["ann@example.com\vBcc: x@evil.example"], "subject": "s", "text": "t"},
    ],
)
def test_a_payload_of_the_wrong_shape_is_refused_as_invalid(payload):
    with pytest.raises(InvalidEmail, match="malformed"):
        EmailJob.from_dict(payload)


@pytest.mark.parametrize("char", ["\x01", "\x1f", "\x7f", "\x9b"])
@pytest.mark.parametrize("field", ["subject", "headers", "to"])
def test_a_control_character_in_a_header_is_refused(settings, char, field):
    kwargs = {
        "subject": {"subject": f"a{char}b"},
        "headers": {"headers": {"X-Note": f"a{char}b"}},
        "to": {"to": f'"Ann{char}" <ann@example.com>'},
    }[field]

    with pytest.raises(InvalidEmail, match="control character"):
        validate_job(job_kwargs(**kwargs), settings)
    with pytest.raises(InvalidEmail, match="control character"):
        EmailJob.from_dict({**job_kwargs(**kwargs), "to": [job_kwargs(**kwargs)["to"]]})


def test_a_body_the_producer_accepts_is_accepted_by_the_worker(settings):
    # Bodies are not headers: a form feed or text that looks like an encoded word is fine
    body = "page one\fpage two: =?utf-8?q?not_a_header?=\x01"
    job = validate_job(job_kwargs(text=body, html=f"<p>{body}</p>"), settings)

    assert EmailJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
