"""The plain-Celery baseline: the article's recipe in a task, connect and log in per email."""

import os
import smtplib
from email.message import EmailMessage

from celery import Celery

app = Celery("baseline", broker=os.environ["REDIS_URL"])
app.conf.update(task_serializer="json", accept_content=["json"], task_acks_late=True,
                worker_prefetch_multiplier=1, task_default_queue="baseline")  # fmt: skip


@app.task(name="baseline.send", ignore_result=True)
def send(to: str, subject: str, text: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "bench@example.com", to, subject
    message.set_content(text)
    with smtplib.SMTP("127.0.0.1", int(os.environ["SINK_PORT"])) as server:
        server.login("bench@example.com", "password")
        server.send_message(message)
