"""SMTPSender in this process against a real aiosmtpd server: TLS, AUTH, pooling and faults."""

import itertools
import os
import smtplib
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme

from emailq.config import Settings, load_settings
from emailq.core.errors import ConfigurationError, TLSVerificationError
from emailq.core.validation import validate_job
from emailq.worker.message import build_message
from emailq.worker.sender import SendResult, SMTPSender
from tests.support import smtp
from tests.support.smtp import SMTPTestServer

_job_ids = itertools.count(1)


def make_settings(
    server: SMTPTestServer,
    *,
    security: str = "starttls",
    ca_file: Path | None = None,
    password: str | None = smtp.PASSWORD,
    **extra: Any,
) -> Settings:
    """Settings that reach ``server``. Everything the test depends on is passed explicitly,
    so SMTP_* variables in the developer's environment cannot change the outcome."""
    return load_settings(
        _env_file=os.devnull,
        smtp_server="127.0.0.1",
        smtp_port=server.port,
        smtp_security=security,
        smtp_ca_file=ca_file,
        email_address=smtp.USER,
        email_password=password,
        **extra,
    )


def make_message(settings: Settings, **fields: Any) -> tuple[list[str], EmailMessage]:
    """Envelope recipients and the built message for a job (defaults: one recipient, text)."""
    job = validate_job(
        {"to": "ann@example.com", "subject": "Test", "text": "Hello", **fields}, settings
    )
    message = build_message(job, job_id=f"job-{next(_job_ids)}", sender=settings.sender)
    return job.recipients, message


def send(sender: SMTPSender, settings: Settings, **fields: Any) -> tuple[SendResult, EmailMessage]:
    recipients, message = make_message(settings, **fields)
    result = sender.send(message, sender=settings.sender.addr_spec, recipients=recipients)
    return result, message


@pytest.fixture
def start_server() -> Iterator[Callable[..., SMTPTestServer]]:
    """Start extra aiosmtpd servers (``SMTPTestServer`` arguments); all stop after the test."""
    started: list[SMTPTestServer] = []

    def start(server_context: ssl.SSLContext | None = None, **kwargs: Any) -> SMTPTestServer:
        server = SMTPTestServer(server_context, **kwargs).__enter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)


@pytest.fixture
def make_sender(start_server) -> Iterator[Callable[[Settings], SMTPSender]]:
    """Senders built in the test; closed (QUIT) before any server stops."""
    senders: list[SMTPSender] = []

    def make(settings: Settings) -> SMTPSender:
        sender = SMTPSender(settings)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close()


# --- TLS verification and security modes -------------------------------------------------


def test_starttls_with_auth_and_ca_file_delivers_envelope_and_content(
    smtp_server, ca_file, make_sender
):
    settings = make_settings(smtp_server, ca_file=ca_file)
    sender = make_sender(settings)

    result, message = send(
        sender, settings, to=["Ann <ann@example.com>"], cc="bob@example.com", subject="Hi"
    )

    [received] = smtp_server.handler.wait_for(1)
    assert received.mail_from == smtp.USER
    assert received.rcpt_tos == ["ann@example.com", "bob@example.com"]
    msg = received.message
    assert msg["Message-ID"] == message["Message-ID"]
    assert msg["Subject"] == "Hi"
    assert msg["To"] == "Ann <ann@example.com>"
    assert msg["Cc"] == "bob@example.com"
    assert msg.get_content().strip() == "Hello"
    assert smtp_server.handler.logins == 1
    assert result.accepted == ("ann@example.com", "bob@example.com")
    assert result.refused == {}
    assert result.reply[0] == 250
    assert sender.opened == 1


def test_certificate_from_an_unknown_ca_is_refused_before_the_password_is_sent(
    smtp_server, make_sender
):
    settings = make_settings(smtp_server, ca_file=None)
    sender = make_sender(settings)

    with pytest.raises(TLSVerificationError) as caught:
        send(sender, settings)

    assert isinstance(caught.value, ConnectionError)
    assert isinstance(caught.value, ConfigurationError)
    assert "SMTP_CA_FILE" in str(caught.value)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert smtp_server.handler.messages == []
    assert smtp_server.handler.logins == 0
    assert sender.opened == 0


def test_certificate_for_another_hostname_is_refused_even_with_the_ca_file(
    ca: trustme.CA, ca_file, start_server, make_sender
):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(context)
    server = start_server(context)
    settings = make_settings(server, ca_file=ca_file)
    sender = make_sender(settings)

    with pytest.raises(TLSVerificationError) as caught:
        send(sender, settings)

    assert "mismatch" in str(caught.value)  # "IP address mismatch, certificate is not valid..."
    assert server.handler.messages == []
    assert server.handler.logins == 0


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_implicit_tls_delivers_with_verification(
    server_context, ca_file, start_server, make_sender
):
    server = start_server(server_context, mode="ssl", auth=True)
    settings = make_settings(server, security="ssl", ca_file=ca_file)
    sender = make_sender(settings)

    result, message = send(sender, settings)

    [received] = server.handler.wait_for(1)
    assert received.message["Message-ID"] == message["Message-ID"]
    assert received.rcpt_tos == ["ann@example.com"]
    assert server.handler.logins == 1
    assert result.accepted == ("ann@example.com",)


def test_implicit_tls_refuses_a_certificate_from_an_unknown_ca(
    server_context, start_server, make_sender
):
    server = start_server(server_context, mode="ssl", auth=False)
    settings = make_settings(server, security="ssl", ca_file=None, password=None)
    sender = make_sender(settings)

    with pytest.raises(TLSVerificationError):
        send(sender, settings)

    assert server.handler.messages == []


def test_starttls_setting_refuses_a_server_that_does_not_offer_starttls(
    ca_file, start_server, make_sender
):
    server = start_server(mode="none", auth=False)
    settings = make_settings(server, security="starttls", ca_file=ca_file)
    sender = make_sender(settings)

    with pytest.raises(smtplib.SMTPNotSupportedError, match="does not offer STARTTLS"):
        send(sender, settings)

    assert server.handler.messages == []
    assert server.handler.logins == 0


def test_security_none_without_password_delivers_for_local_development(start_server, make_sender):
    server = start_server(mode="none", auth=False)
    settings = make_settings(server, security="none", password=None)
    sender = make_sender(settings)

    result, message = send(sender, settings)

    [received] = server.handler.wait_for(1)
    assert received.message["Message-ID"] == message["Message-ID"]
    assert result.accepted == ("ann@example.com",)


# --- Connection pool -----------------------------------------------------------------------


def test_sequential_messages_reuse_one_connection_and_one_login(smtp_server, ca_file, make_sender):
    settings = make_settings(smtp_server, ca_file=ca_file)
    sender = make_sender(settings)

    sent = [send(sender, settings)[1]["Message-ID"] for _ in range(10)]

    received = smtp_server.handler.wait_for(10)
    assert [r.message["Message-ID"] for r in received] == sent
    assert smtp_server.handler.logins == 1
    assert sender.opened == 1


def test_connection_closed_by_the_server_while_idle_is_replaced(
    server_context, ca_file, start_server, make_sender
):
    server = start_server(server_context, idle_timeout_s=1)
    settings = make_settings(server, ca_file=ca_file)
    sender = make_sender(settings)

    _, first = send(sender, settings)
    time.sleep(2.5)  # aiosmtpd drops the pooled session after 1 s of silence
    result, second = send(sender, settings)

    received = server.handler.wait_for(2)
    assert [r.message["Message-ID"] for r in received] == [
        first["Message-ID"],
        second["Message-ID"],
    ]
    assert result.accepted == ("ann@example.com",)
    assert sender.opened == 2
    assert server.handler.logins == 2


def test_threads_sharing_one_sender_deliver_every_message_exactly_once(
    smtp_server, ca_file, make_sender
):
    settings = make_settings(smtp_server, ca_file=ca_file)
    sender = make_sender(settings)
    threads, per_thread = 8, 10
    start = threading.Barrier(threads)
    sent: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        start.wait()
        for _ in range(per_thread):
            try:
                sent.append(send(sender, settings)[1]["Message-ID"])
            except BaseException as exc:
                errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert errors == []
    received = smtp_server.handler.wait_for(threads * per_thread)
    counts = Counter(r.message["Message-ID"] for r in received)
    assert len(sent) == len(set(sent)) == threads * per_thread
    assert counts == Counter(sent)  # every message once, nothing else
    # At most one connection per thread: about 10 messages each, below the pool's
    # MAX_MESSAGES_PER_CONNECTION (25), so no connection is rotated out during the test.
    assert sender.opened <= threads
    assert smtp_server.handler.logins == sender.opened


# --- Refusals, timeouts and server errors --------------------------------------------------


def test_refused_recipient_is_reported_and_the_others_still_receive_the_message(
    smtp_server, ca_file, make_sender
):
    smtp_server.handler.rcpt_replies["bob@example.com"] = "550 5.1.1 No such user"
    settings = make_settings(smtp_server, ca_file=ca_file)
    sender = make_sender(settings)

    result, _ = send(
        sender, settings, to=["ann@example.com", "bob@example.com", "carol@example.com"]
    )

    assert result.accepted == ("ann@example.com", "carol@example.com")
    assert result.refused.keys() == {"bob@example.com"}
    code, text = result.refused["bob@example.com"]
    assert code == 550
    assert "No such user" in text
    [received] = smtp_server.handler.wait_for(1)
    assert received.rcpt_tos == ["ann@example.com", "carol@example.com"]


def test_all_recipients_refused_raises_and_nothing_is_delivered(smtp_server, ca_file, make_sender):
    for rcpt in ("ann@example.com", "bob@example.com"):
        smtp_server.handler.rcpt_replies[rcpt] = "550 5.1.1 No such user"
    settings = make_settings(smtp_server, ca_file=ca_file)
    sender = make_sender(settings)

    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        send(sender, settings, to=["ann@example.com", "bob@example.com"])

    assert caught.value.recipients.keys() == {"ann@example.com", "bob@example.com"}
    assert {code for code, _ in caught.value.recipients.values()} == {550}
    assert smtp_server.handler.messages == []


def test_smtp_timeout_applies_and_the_timed_out_connection_is_discarded(
    smtp_server, ca_file, make_sender
):
    settings = make_settings(smtp_server, ca_file=ca_file, smtp_timeout_s=0.5)
    sender = make_sender(settings)
    smtp_server.handler.data_delay_s = 3

    # smtplib turns the socket timeout while reading the DATA reply into a disconnect.
    with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out") as caught:
        send(sender, settings)
    assert isinstance(caught.value.__context__, TimeoutError)

    smtp_server.handler.data_delay_s = 0
    result, message = send(sender, settings)

    assert result.accepted == ("ann@example.com",)
    received = smtp_server.handler.wait_for(1)
    assert message["Message-ID"] in [r.message["Message-ID"] for r in received]
    assert sender.opened == 2


def test_temporary_data_error_raises_451_and_the_next_send_succeeds(
    smtp_server, ca_file, make_sender
):
    smtp_server.handler.data_replies.append("451 4.3.0 Try again later")
    settings = make_settings(smtp_server, ca_file=ca_file)
    sender = make_sender(settings)

    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(sender, settings)
    assert caught.value.smtp_code == 451
    assert b"Try again later" in caught.value.smtp_error

    result, message = send(sender, settings)

    assert result.accepted == ("ann@example.com",)
    [received] = smtp_server.handler.wait_for(1)
    assert received.message["Message-ID"] == message["Message-ID"]


# --- Message content on the wire -----------------------------------------------------------


def test_bcc_is_in_the_envelope_but_not_in_the_delivered_bytes(smtp_server, ca_file, make_sender):
    settings = make_settings(smtp_server, ca_file=ca_file)
    sender = make_sender(settings)

    result, _ = send(sender, settings, to="ann@example.com", bcc="audit@example.com")

    [received] = smtp_server.handler.wait_for(1)
    assert received.rcpt_tos == ["ann@example.com", "audit@example.com"]
    assert result.accepted == ("ann@example.com", "audit@example.com")
    assert b"audit@example.com" not in received.data
    assert received.message["Bcc"] is None


def test_binary_attachment_arrives_byte_exact(smtp_server, ca_file, make_sender):
    settings = make_settings(smtp_server, ca_file=ca_file)
    sender = make_sender(settings)
    content = bytes(range(256)) * 1000

    send(sender, settings, attachments=[{"filename": "blob.bin", "content": content}])

    [received] = smtp_server.handler.wait_for(1)
    [attachment] = received.message.iter_attachments()
    assert attachment.get_filename() == "blob.bin"
    assert attachment.get_content_type() == "application/octet-stream"
    assert attachment.get_content() == content


def test_smtp_max_connections_caps_sessions_while_threads_wait_their_turn(
    smtp_server, ca_file, make_sender
):
    settings = make_settings(smtp_server, ca_file=ca_file, smtp_max_connections=2)
    sender = make_sender(settings)
    smtp_server.handler.data_delay_s = 0.02  # keep sessions busy so threads contend

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: send(sender, settings), range(40)))

    assert len(smtp_server.handler.wait_for(40)) == 40
    assert sender.opened <= 2 and smtp_server.handler.logins <= 2
