from __future__ import annotations

import time
from typing import Any

from django.http import HttpRequest

# Cards changed after this moment are re-sent when the page's socket
# connects; the margin covers an evaluation that committed while the page was
# being rendered, and small clock differences between hosts.
SINCE_MARGIN_SECONDS = 5.0


def live(request: HttpRequest) -> dict[str, Any]:
    return {
        "live_since": f"{time.time() - SINCE_MARGIN_SECONDS:.3f}",
        # The user turned animation off in their settings (read by
        # accounts.middleware.UserLanguageMiddleware): bars jump, nothing celebrates.
        "motion_reduced": not getattr(request, "accolade_animate", True),
    }
