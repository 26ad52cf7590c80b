"""Headers shared by the routes that send a library image (``/files`` and the gallery's)."""

from __future__ import annotations

from typing import Literal

from runapi_mcp.tasks import ImageRecord
from runapi_mcp.tasks.images import extension_for

# An image id names one picture for ever (and so does its thumbnail).
IMMUTABLE_CACHE = "private, max-age=86400, immutable"


def image_headers(image: ImageRecord, disposition: Literal["inline", "attachment"]) -> dict[str, str]:
    """Cache-Control, nosniff and a Content-Disposition naming the file ``<image id><extension>``."""
    return {
        "Cache-Control": IMMUTABLE_CACHE,
        "X-Content-Type-Options": "nosniff",
        # Image ids are [A-Za-z0-9_-] (valid_image_id): nothing to quote in the file name.
        "Content-Disposition": f'{disposition}; filename="{image.id}{extension_for(image.mime_type)}"',
    }
