"""Build the MIME message for a job with ``EmailMessage`` and the default policy."""

from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

import html2text

from emailq.core.job import EmailJob


def html_to_text(html: str) -> str:
    """The plain-text alternative of an HTML-only email (links kept as footnotes)."""
    converter = html2text.HTML2Text()
    converter.body_width = 0  # let mail clients wrap; hard wraps break URLs
    converter.inline_links = False
    converter.ignore_images = True
    return converter.handle(html).strip() + "\n"


def message_id(job_id: str, sender: Address) -> str:
    """``<JOB_ID@sender-domain>``: stable across retries, so receivers can de-duplicate."""
    domain = sender.domain.encode("idna").decode("ascii")
    return f"<{job_id}@{domain}>"


def _cte(body: str) -> str | None:
    # The default policy would pick 8bit for non-ASCII text, which needs the
    # server's 8BITMIME; quoted-printable is safe over any SMTP hop.
    return None if body.isascii() else "quoted-printable"


def build_message(
    job: EmailJob, *, job_id: str, sender: Address, now: datetime | None = None
) -> EmailMessage:
    """The message as it goes on the wire. Bcc recipients are left to the envelope."""
    msg = EmailMessage(policy=policy.default)
    # An IDN domain goes in ASCII form: encoded-words are not allowed inside an address.
    domain = sender.domain.encode("idna").decode("ascii")
    msg["From"] = Address(sender.display_name, sender.username, domain)
    msg["To"] = ", ".join(job.to)
    if job.cc:
        msg["Cc"] = ", ".join(job.cc)
    if job.reply_to:
        msg["Reply-To"] = ", ".join(job.reply_to)
    msg["Subject"] = job.subject
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = message_id(job_id, sender)
    for name, value in job.headers.items():
        msg[name] = value

    text = job.text if job.text is not None else html_to_text(job.html or "")
    msg.set_content(text, cte=_cte(text))
    if job.html is not None:
        msg.add_alternative(job.html, subtype="html", cte=_cte(job.html))
    for attachment in job.attachments:
        maintype, _, subtype = attachment.mimetype.partition("/")
        msg.add_attachment(
            attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    return msg
