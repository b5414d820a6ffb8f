"""Where the feed's files go: the `accolade_feed` entry of Django's STORAGES.

The default is a directory (ACCOLADE_FEED_DIR). Any storage that overwrites
a name on save serves: an object store through django-storages' S3Storage
does, and a file there appears whole.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from django.core.files.base import File
from django.core.files.storage import FileSystemStorage


class FeedDirectory(FileSystemStorage):
    """A directory whose files appear whole (written aside, then renamed over the
    name), and are replaced when written again: a reader never sees half a file,
    and the exporter writing a file again after a crash leaves one copy."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_overwrite", True)
        super().__init__(**kwargs)

    def _save(self, name: str, content: File) -> str:
        path = self.path(name)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".writing-")
        try:
            with os.fdopen(handle, "wb") as out:
                for chunk in content.chunks():
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
        return name
