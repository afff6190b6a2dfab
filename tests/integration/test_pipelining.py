"""ESMTP PIPELINING (RFC 2920): SMTPSender against real aiosmtpd servers, and the bench sink.

Outcome tests run twice: against a server that advertises PIPELINING (the sender
pipelines) and one that does not (the sender goes step by step); both must agree.
"""

import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from email import policy
from typing import Any

import pytest

from benchmarks.sink import Sink
from emailq.config import Settings
from emailq.worker.sender import MAX_PIPELINED_RECIPIENTS, SMTPSender
from tests.integration.test_sender import make_message, make_settings, send
from tests.support import free_port
from tests.support.smtp import SMTPTestServer

MODES = [pytest.param(True, id="pipelined"), pytest.param(False, id="sequential")]
Started = tuple[SMTPTestServer, Settings, SMTPSender]


@pytest.fixture
def start(server_context, ca_file) -> Iterator[Callable[..., Started]]:
    """A STARTTLS + AUTH server (``SMTPTestServer`` arguments), its settings and a sender."""
    servers: list[SMTPTestServer] = []
    senders: list[SMTPSender] = []

    def make(**kwargs: Any) -> Started:
        server = SMTPTestServer(server_context, **kwargs).__enter__()
        servers.append(server)
        settings = make_settings(server, ca_file=ca_file)
        senders.append(SMTPSender(settings))
        return server, settings, senders[-1]

    yield make
    for sender in senders:
        sender.close()
    for server in servers:
        server.__exit__(None, None, None)


def test_mail_every_rcpt_and_data_arrive_together_when_pipelining_is_advertised(start):
    server, settings, sender = start()

    result, message = send(sender, settings, to=["ann@example.com", "bob@example.com"])

    assert server.handler.pipelined == [["RCPT", "RCPT", "DATA"]]
    [received] = server.handler.wait_for(1)
    assert received.rcpt_tos == ["ann@example.com", "bob@example.com"]
    assert received.message["Message-ID"] == message["Message-ID"]
    assert result.accepted == ("ann@example.com", "bob@example.com")
    assert result.reply[0] == 250


def test_commands_go_one_at_a_time_when_pipelining_is_not_advertised(start):
    server, settings, sender = start(pipelining=False)

    result, _ = send(sender, settings, to=["ann@example.com", "bob@example.com"])

    assert server.handler.pipelined == [[]]
    assert len(server.handler.wait_for(1)) == 1
    assert result.accepted == ("ann@example.com", "bob@example.com")


def test_pipelined_message_bytes_are_the_sequential_ones(start):
    pipelined, settings, pipelining_sender = start()
    sequential, _, sequential_sender = start(pipelining=False)
    recipients, message = make_message(settings, text="Hi\n.\n..two\n.one\nend.")
    wire = message.as_bytes(policy=policy.SMTP)
    assert b"\r\n.\r\n" in wire and b"\r\n.one" in wire  # lines that need dot-stuffing

    for sender in (pipelining_sender, sequential_sender):
        sender.send(message, sender=settings.sender.addr_spec, recipients=recipients)

    [via_pipelining] = pipelined.handler.wait_for(1)
    [via_steps] = sequential.handler.wait_for(1)
    assert pipelined.handler.pipelined == [["RCPT", "DATA"]]
    assert via_pipelining.data == via_steps.data == wire


def test_pooled_connection_pipelines_every_message(start):
    server, settings, sender = start()

    for _ in range(3):
        send(sender, settings)

    assert server.handler.pipelined == [["RCPT", "DATA"]] * 3
    assert sender.opened == 1


@pytest.mark.parametrize("pipelining", MODES)
def test_partly_refused_recipients_are_reported_and_the_rest_receive_it(start, pipelining):
    server, settings, sender = start(pipelining=pipelining)
    server.handler.rcpt_replies["bob@example.com"] = "550 5.1.1 No such user"

    result, _ = send(sender, settings, to=["ann@example.com", "bob@example.com", "cy@example.com"])

    assert result.accepted == ("ann@example.com", "cy@example.com")
    assert result.refused == {"bob@example.com": (550, "5.1.1 No such user")}
    [received] = server.handler.wait_for(1)
    assert received.rcpt_tos == ["ann@example.com", "cy@example.com"]


@pytest.mark.parametrize("pipelining", MODES)
def test_many_recipients_go_in_groups_of_rcpts_with_the_same_outcome(start, pipelining):
    server, settings, sender = start(pipelining=pipelining)
    recipients = [f"user{i}@example.com" for i in range(250)]
    server.handler.rcpt_replies["user160@example.com"] = "550 5.1.1 No such user"

    result, _ = send(sender, settings, to=recipients)

    accepted = [r for r in recipients if r != "user160@example.com"]
    assert result.accepted == tuple(accepted)
    assert result.refused == {"user160@example.com": (550, "5.1.1 No such user")}
    [received] = server.handler.wait_for(1)
    assert received.rcpt_tos == accepted
    # pipelined: a group's RCPTs arrive together (at most MAX_PIPELINED_RECIPIENTS of them);
    # otherwise one at a time, a round trip each
    behind = server.handler.most_behind_rcpt
    assert (50 <= behind < MAX_PIPELINED_RECIPIENTS) if pipelining else behind == 0


@pytest.mark.parametrize("pipelining", MODES)
def test_all_recipients_refused_raises_and_the_next_message_goes_through(start, pipelining):
    server, settings, sender = start(pipelining=pipelining)
    server.handler.rcpt_replies["bob@example.com"] = ["550 5.1.1 No such user"]

    with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        send(sender, settings, to="bob@example.com")
    result, message = send(sender, settings, to="bob@example.com")

    assert caught.value.recipients == {"bob@example.com": (550, b"5.1.1 No such user")}
    [received] = server.handler.wait_for(1)
    assert received.message["Message-ID"] == message["Message-ID"]
    assert result.accepted == ("bob@example.com",)


def test_all_recipients_refused_but_data_accepted_sends_no_message(start):
    server, settings, sender = start()
    server.handler.rcpt_replies["bob@example.com"] = ["550 5.1.1 No such user"]
    server.handler.data_command_replies.append("354 go ahead")

    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(sender, settings, to="bob@example.com")
    send(sender, settings, to="bob@example.com")

    assert len(server.handler.wait_for(1)) == 1
    assert sender.opened == 2  # the connection left in DATA was dropped


@pytest.mark.parametrize("pipelining", MODES)
def test_refused_sender_raises_and_the_next_message_goes_through(start, pipelining):
    server, settings, sender = start(pipelining=pipelining)
    server.handler.mail_replies.append("553 5.7.1 Sender not allowed")

    with pytest.raises(smtplib.SMTPSenderRefused) as caught:
        send(sender, settings)
    result, _ = send(sender, settings)

    assert (caught.value.smtp_code, caught.value.sender) == (553, settings.sender.addr_spec)
    assert caught.value.smtp_error == b"5.7.1 Sender not allowed"
    assert len(server.handler.wait_for(1)) == 1
    assert result.accepted == ("ann@example.com",)


def test_refused_sender_with_data_accepted_anyway_sends_no_message(start):
    server, settings, sender = start()
    server.handler.mail_replies.append("553 5.7.1 Sender not allowed")
    server.handler.data_command_replies.append("354 go ahead")

    with pytest.raises(smtplib.SMTPSenderRefused):
        send(sender, settings)
    send(sender, settings)

    assert len(server.handler.wait_for(1)) == 1
    assert sender.opened == 2


@pytest.mark.parametrize("pipelining", MODES)
def test_refused_data_command_raises_data_error(start, pipelining):
    server, settings, sender = start(pipelining=pipelining)
    server.handler.data_command_replies.append("451 4.3.1 Queue full")

    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(sender, settings)
    send(sender, settings)

    assert (caught.value.smtp_code, caught.value.smtp_error) == (451, b"4.3.1 Queue full")
    assert len(server.handler.wait_for(1)) == 1


@pytest.mark.parametrize("pipelining", MODES)
def test_refused_message_raises_data_error(start, pipelining):
    server, settings, sender = start(pipelining=pipelining)
    server.handler.data_replies.append("554 5.6.0 Content rejected")

    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(sender, settings)
    send(sender, settings)

    assert caught.value.smtp_code == 554
    assert len(server.handler.wait_for(1)) == 1


@pytest.mark.parametrize("pipelining", MODES)
def test_421_to_mail_on_a_reused_connection_retries_on_a_new_one(start, pipelining):
    server, settings, sender = start(pipelining=pipelining)
    send(sender, settings)
    server.handler.mail_replies.append("421 4.4.2 Closing")

    result, message = send(sender, settings)

    assert result.accepted == ("ann@example.com",)
    assert server.handler.wait_for(2)[1].message["Message-ID"] == message["Message-ID"]
    assert sender.opened == 2


@pytest.mark.parametrize("pipelining", MODES)
def test_421_to_mail_on_a_fresh_connection_raises(start, pipelining):
    server, settings, sender = start(pipelining=pipelining)
    server.handler.mail_replies.append("421 4.4.2 Closing")

    with pytest.raises(smtplib.SMTPSenderRefused) as caught:
        send(sender, settings)

    assert caught.value.smtp_code == 421
    assert sender.opened == 1


@pytest.mark.parametrize("pipelining", MODES)
def test_connection_dropped_by_the_server_while_idle_is_replaced(start, pipelining):
    server, settings, sender = start(pipelining=pipelining, idle_timeout_s=0.5)
    send(sender, settings)
    time.sleep(1.5)  # aiosmtpd drops the pooled session after 0.5 s of silence

    result, _ = send(sender, settings)

    assert result.accepted == ("ann@example.com",)
    assert len(server.handler.wait_for(2)) == 2
    assert sender.opened == 2


# --- The benchmark sink: latency, not a serial delay ---------------------------------------


def _replies(conn: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` complete replies (a multi-line reply counts once)."""
    buffer = b""
    while True:
        lines = buffer.split(b"\r\n")[:-1]
        if sum(line[3:4] == b" " for line in lines) >= count:
            return lines
        chunk = conn.recv(4096)
        assert chunk, buffer
        buffer += chunk


@pytest.fixture(scope="module")
def slow_sink() -> Iterator[int]:
    port = free_port()
    sink = Sink(port, delay_ms=300)
    yield port
    sink.stop()


def test_sink_advertises_pipelining(slow_sink):
    with smtplib.SMTP("127.0.0.1", slow_sink, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("pipelining")


def test_sink_answers_each_awaited_command_after_the_delay_and_a_pipelined_group_after_one(
    slow_sink,
):
    with socket.create_connection(("127.0.0.1", slow_sink), timeout=10) as conn:
        _replies(conn, 1)  # greeting
        conn.sendall(b"EHLO test\r\n")
        _replies(conn, 1)

        started = time.monotonic()
        conn.sendall(b"NOOP\r\n")
        _replies(conn, 1)
        awaited = time.monotonic() - started

        started = time.monotonic()
        conn.sendall(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        replies = _replies(conn, 3)
        pipelined = time.monotonic() - started

    assert [r[:3] for r in replies] == [b"250", b"250", b"354"]
    assert awaited >= 0.29
    assert 0.29 <= pipelined < 0.6  # one delay, not three (0.9 s)
