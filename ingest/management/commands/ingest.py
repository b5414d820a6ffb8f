"""`manage.py ingest`: consume events from NATS JetStream (the Procfile's `ingest`)."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ingest import runner
from ingest.sources import JetStreamSource

logger = logging.getLogger("ingest")

CONSUMER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Tokens of letters, digits, '-' or '_', '*' for one token, '>' for the rest.
SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.([A-Za-z0-9_-]+|\*))*(\.>)?")


class Command(BaseCommand):
    help = (
        "Consume event documents from a NATS JetStream stream and record them, "
        "acknowledging each batch once it is committed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--servers",
            default=",".join(settings.ACCOLADE_NATS_SERVERS),
            help="NATS servers, comma-separated (NATS_URL; default %(default)s)",
        )
        parser.add_argument(
            "--durable",
            default=settings.ACCOLADE_INGEST_DURABLE,
            help="the durable consumer's name (default %(default)s)",
        )
        parser.add_argument(
            "--filter",
            default="",
            help="the subjects this consumer takes (default: the whole prefix, <prefix>.>); "
            "one producer's or partition's, to run one consumer per partition",
        )
        parser.add_argument(
            "--set-up",
            action="store_true",
            help="create the stream and the durable consumer if missing, then exit "
            "(so producers can publish before the first ingest runs)",
        )
        parser.add_argument(
            "--batch",
            type=int,
            default=settings.ACCOLADE_INGEST_BATCH,
            help="messages per fetch and per commit (default %(default)s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        prefix = settings.ACCOLADE_INGEST_PREFIX
        servers = [s.strip() for s in options["servers"].split(",") if s.strip()]
        if not servers or not all(s.startswith(("nats://", "tls://")) for s in servers):
            raise CommandError("--servers: give nats:// or tls:// URLs, comma-separated")
        durable = options["durable"]
        if not CONSUMER_NAME.fullmatch(durable):
            raise CommandError(
                "--durable: 1-64 letters, digits, '-' or '_' (it names a JetStream consumer)"
            )
        filter_subject = options["filter"] or f"{prefix}.>"
        if not SUBJECT.fullmatch(filter_subject) or not filter_subject.startswith(prefix + "."):
            raise CommandError(
                f"--filter: a subject under {prefix}. (tokens of letters, digits, '-' or '_'; "
                f"'*' for one token, '>' for the rest), such as {prefix}.shop.>"
            )
        if options["batch"] < 1 or options["batch"] > 10_000:
            raise CommandError("--batch: between 1 and 10000")
        source = JetStreamSource(
            servers=servers,
            stream=settings.ACCOLADE_INGEST_STREAM,
            prefix=prefix,
            durable=durable,
            filter_subject=filter_subject,
            ack_wait=float(settings.ACCOLADE_INGEST_ACK_WAIT_SECONDS),
            max_age_days=settings.ACCOLADE_INGEST_STREAM_MAX_AGE_DAYS,
        )

        if options["set_up"]:
            asyncio.run(source.set_up())
            self.stdout.write(f"The stream {source.stream} and the consumer {durable} are ready")
            return

        async def main() -> None:
            stopping = asyncio.Event()
            runner.install_signal_handlers(stopping)
            await runner.run(source, batch_size=options["batch"], stopping=stopping)

        self.stdout.write(f"Ingesting {filter_subject} from {', '.join(servers)} as {durable}")
        asyncio.run(main())
