"""A development SMTP server that writes every message it receives to an outbox as ``.eml``."""

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import click

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, Envelope, Session
except ImportError:  # an extra: applications and workers never need it
    raise click.ClickException(
        "emailq sink needs aiosmtpd: pip install 'emailq[sink]' (make install includes it)"
    ) from None

log = logging.getLogger(__name__)

DATA_SIZE_LIMIT = 64 * 1024 * 1024  # 20 MiB of attachments is ~27 MiB once base64-encoded


class OutboxHandler:
    """aiosmtpd handler: one ``.eml`` file per message, envelope recorded in front."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        outbox.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{uuid.uuid4().hex[:12]}.eml"
        envelope_lines = (
            f"X-Envelope-From: <{envelope.mail_from}>\r\n"
            f"X-Envelope-To: {', '.join(f'<{r}>' for r in envelope.rcpt_tos)}\r\n"
        )
        content: Any = envelope.original_content or envelope.content or b""
        # Write then rename, so a reader never sees half a message.
        partial = self.outbox / f".{name}.part"
        partial.write_bytes(envelope_lines.encode() + content)
        partial.rename(self.outbox / name)
        log.info("%s -> %s: %s", envelope.mail_from, envelope.rcpt_tos, name)
        return "250 Message accepted for delivery"


def start_sink(host: str, port: int, outbox: Path) -> Controller:
    """Start the sink in a background thread; ``.stop()`` it when done."""
    controller = Controller(
        OutboxHandler(outbox),
        hostname=host,
        port=port,
        data_size_limit=DATA_SIZE_LIMIT,
        enable_SMTPUTF8=True,
    )
    controller.start()
    return controller
