"""What a worker asks of Redis per single job: a handful of commands, each one round trip.

Counted with MONITOR: the commands the worker sends, not those its scripts run inside Redis.
Per job: the fetch script, and the ledger's begin and record scripts. The record also
releases the lock, counts the outcome, stores the task's result and acknowledges the job
(emailq.worker.completion); task events are published in batches.
"""

import collections
import threading

import redis

from emailq.producer import enqueue_email

JOBS = 200
# About 3.6 today; 6.7 with the result and the ack written apart from the record, and
# about 18 the way Celery and kombu do it on their own.
MAX_COMMANDS_PER_JOB = 5


def test_a_single_job_costs_the_worker_few_redis_commands(smtp_server, start_worker, session_redis):
    for i in range(JOBS):
        enqueue_email.delay(to=f"u{i}@example.com", subject=f"{i}", text="x")
    sent: collections.Counter[str] = collections.Counter()
    client = redis.Redis.from_url(session_redis.url)
    stop = threading.Event()
    ready = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                if stop.is_set():
                    return
                if command["client_type"] != "lua":  # not a command run inside a script
                    sent[command["command"].split()[0].upper()] += 1

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(10)

    # When a worker starts on the queued jobs and sends them all
    start_worker(smtp_server, concurrency=4)
    smtp_server.handler.wait_for(JOBS, timeout=120)
    stop.set()
    client.ping()  # one more command, so that the watcher sees the stop
    watcher.join(10)

    # Then each cost it a handful of commands, start-up and idle polls included
    per_job = sum(sent.values()) / JOBS
    assert per_job <= MAX_COMMANDS_PER_JOB, sent.most_common()
