"""An expected dead letter is one ERROR line in the worker's log, not a bug's traceback.

Retries spent, a permanent refusal, an invalid payload: each is logged once at ERROR with
the job id, the reason and the last SMTP reply, while the task still ends in FAILURE.
"""

import time

import pytest

from emailq.core.errors import InvalidEmail, PermanentError, TransientError
from emailq.producer import enqueue_email
from emailq.worker.tasks import send
from tests.support.faults import FAST_RETRIES, dead_letters


def test_each_expected_dead_letter_is_one_error_line_without_a_traceback(
    smtp_server, start_worker, session_redis
):
    # Given a worker with one retry, and a server that defers one address and refuses another
    worker = start_worker(smtp_server, **{**FAST_RETRIES, "MAX_RETRIES": "1"})
    smtp_server.handler.rcpt_replies["busy@example.com"] = "451 4.3.0 Try later"
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"

    # When one job runs out of retries, one is refused, and one payload is not a job
    exhausted = enqueue_email.delay(to="busy@example.com", subject="s", text="t")
    refused = enqueue_email.delay(to="gone@example.com", subject="s", text="t")
    invalid = send.apply_async(kwargs={"subject": "no recipient"})
    dead_letters(session_redis.client(), count=3, timeout=60)

    # Then every task still fails, so get() raises and error callbacks run
    with pytest.raises(TransientError):
        exhausted.get(timeout=30)
    with pytest.raises(PermanentError):
        refused.get(timeout=30)
    with pytest.raises(InvalidEmail):
        invalid.get(timeout=30)
    # And each job has exactly one ERROR line, naming the reason and the last reply
    expected = {
        exhausted.id: ("(exhausted)", "last SMTP reply: 451 4.3.0 Try later"),
        refused.id: ("(permanent)", "last SMTP reply: 550 5.1.1 No such user"),
        invalid.id: ("(invalid)", "last SMTP reply: no reply recorded"),
    }
    time.sleep(0.5)  # the log is written by another process
    log = worker.log()
    for job_id, words in expected.items():
        errors = [line for line in log.splitlines() if job_id in line and "ERROR" in line]
        assert len(errors) == 1, errors
        assert all(word in errors[0] for word in words), errors[0]
        assert f"emailq dlq show {job_id}" in errors[0]
    assert "busy@example.com (451 4.3.0 Try later)" in log  # the error names the recipient
    # And nothing was logged as a bug
    assert "Traceback" not in log
    assert "raised unexpected" not in log


def test_a_sent_job_is_one_info_line_and_a_retry_still_logs(smtp_server, start_worker):
    # Given a worker at INFO, and a server that defers one address once
    worker = start_worker(smtp_server, **FAST_RETRIES)
    smtp_server.handler.rcpt_replies["later@example.com"] = "451 4.3.0 Try later"

    # When one job goes out at once and another is retried
    sent = enqueue_email.delay(to="ann@example.com", subject="s", text="t")
    sent.get(timeout=30)
    retried = enqueue_email.delay(to="later@example.com", subject="s", text="t")
    deadline = time.monotonic() + 30
    while retried.id + "] retry" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.2)

    # Then the sent job has our one line, not Celery's "received" and "succeeded" too
    lines = [line for line in worker.log().splitlines() if sent.id in line]
    assert len(lines) == 1 and "sent to 1 recipient(s)" in lines[0], lines
    # and the retry is still logged, with its cause
    assert "451 4.3.0 Try later" in worker.log()
    assert retried.id + "] retry" in worker.log()
