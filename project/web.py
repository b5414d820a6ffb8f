"""Serve the site with Daphne on the event loop `WEB_EVENT_LOOP` names, tuned to serve.

    python -m project.web --bind 0.0.0.0 --port 8000 project.asgi:application

The arguments are Daphne's own. Daphne builds its event loop (and installs
Twisted's asyncio reactor on it) when `daphne.server` is first imported,
from asyncio's event loop policy at that moment; the `daphne` command has
no hook before that, so this entry point sets the policy and then runs
Daphne's command line. Once the application is loaded and just before
Daphne serves, `tune_process` applies the process tuning (the collector,
Twisted's discarded work); nothing else in the project applies it.

uvloop (libuv) runs the loop's own work in C; what it gains and where it
loses: docs/performance.md, "The web process's event loop".
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

CHOICES = ("auto", "uvloop", "asyncio")


def configure_event_loop(choice: str) -> str:
    """Set asyncio's policy for `choice`; the loop that will run ("uvloop" or "asyncio").

    "auto" takes uvloop where it is installed (it does not run on Windows) and
    asyncio's own loop otherwise; "uvloop" insists on it. Must run before
    anything imports `daphne.server` or installs a Twisted reactor.
    """
    if choice not in CHOICES:
        raise ValueError(f"WEB_EVENT_LOOP: must be one of {', '.join(CHOICES)}, not {choice!r}")
    if "daphne.server" in sys.modules:
        raise RuntimeError("daphne.server is imported already: its event loop is built")
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("WEB_EVENT_LOOP: uvloop is not installed here") from None
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def tune_process() -> None:
    """Tune this process to serve: Twisted skips work Daphne never reads, and the
    collector freezes what start-up built and runs less often (why:
    docs/performance.md). Run once the application is loaded."""
    from django.conf import settings

    from project.gc_tuning import tune_for_server
    from project.twisted_tuning import skip_discarded_access_log, skip_form_parsing

    skip_form_parsing()
    skip_discarded_access_log()
    tune_for_server(settings.WEB_GC_THRESHOLDS)  # last, so all that came before is frozen


def main(argv: Sequence[str] | None = None) -> None:
    try:
        loop = configure_event_loop(os.environ.get("WEB_EVENT_LOOP", "auto").strip() or "auto")
    except ValueError as exc:
        sys.exit(f"project.web: {exc}")
    from daphne.cli import CommandLineInterface
    from daphne.server import Server

    class TunedServer(Server):
        # Daphne's command line builds its server from `server_class` after it
        # has imported the application, then runs it.
        def run(self) -> None:
            tune_process()
            super().run()

    print(f"project.web: Daphne on the {loop} event loop", file=sys.stderr, flush=True)
    cli = CommandLineInterface()
    cli.server_class = TunedServer
    cli.run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
