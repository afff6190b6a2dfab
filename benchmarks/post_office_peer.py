"""django-post_office as a benchmark peer: queue N emails in SQLite, then `send_queued_mail`.

    python -m benchmarks.post_office_peer fill N [RECIPIENTS]
    python -m benchmarks.post_office_peer send

Each email goes to RECIPIENTS addresses (default 1): one in To, the rest in Bcc.
Runs standalone (settings.configure); the database lives in BENCH_DIR, the server is
127.0.0.1:SMTP_PORT, and it logs in only when EMAIL_PASSWORD is set. Django and
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
        EMAIL_PORT=int(os.environ["SMTP_PORT"]),
        EMAIL_HOST_USER="bench@example.com",
        EMAIL_HOST_PASSWORD=os.environ.get("EMAIL_PASSWORD", ""),  # empty: no login
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
        count, width = int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1
        mail.send_many([
            {"sender": "bench@example.com", "recipients": [f"bulk{i}@example.com"],
             "bcc": [f"wide{i}-{j}@example.com" for j in range(1, width)],
             "subject": f"Notification {i}", "message": f"Hello {i},\nyour account was renewed.\n"}
            for i in range(count)
        ])  # fmt: skip
    elif command == "send":
        call_command("send_queued_mail", processes=2)


if __name__ == "__main__":
    main()
