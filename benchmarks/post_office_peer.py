"""django-post_office as a benchmark peer: queue N emails in SQLite, then `send_queued_mail`.

    python -m benchmarks.post_office_peer fill N
    python -m benchmarks.post_office_peer send

Runs standalone (settings.configure); the database lives in BENCH_DIR. Django and
django-post_office come from the `bench` extra, never the service's own dependencies.
"""

import os
import sys

import django
from django.conf import settings


def setup() -> None:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": os.path.join(os.environ["BENCH_DIR"], "po.sqlite3")}},
        INSTALLED_APPS=["django.contrib.contenttypes", "post_office"],
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
        EMAIL_BACKEND="post_office.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=int(os.environ["SINK_PORT"]),
        EMAIL_HOST_USER="bench@example.com",
        EMAIL_HOST_PASSWORD="password",
        POST_OFFICE={
            "BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"},
            "THREADS_PER_PROCESS": 16,  # 2 processes x 16 threads: 32 SMTP connections
            "DEFAULT_PRIORITY": "medium",
        },
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        LOGGING_CONFIG=None,
    )  # fmt: skip
    django.setup()


def main() -> None:
    setup()
    from django.core.management import call_command

    command = sys.argv[1]
    if command == "fill":
        from post_office import mail

        call_command("migrate", verbosity=0)
        count = int(sys.argv[2])
        mail.send_many([
            {"sender": "bench@example.com", "recipients": [f"bulk{i}@example.com"],
             "subject": f"Notification {i}", "message": f"Hello {i},\nyour account was renewed.\n"}
            for i in range(count)
        ])  # fmt: skip
    elif command == "send":
        call_command("send_queued_mail", processes=2)


if __name__ == "__main__":
    main()
