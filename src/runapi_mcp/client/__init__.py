"""The RunAPI HTTP client: a small typed async API over RunAPI's image task endpoints.

It knows nothing of MCP::

    async with RunAPIClient(api_key) as client:
        task = await client.create_task("/api/v1/gpt_image_2/text_to_image", body, idempotency_key=key)
        task = await client.get_task("/api/v1/gpt_image_2/text_to_image", task.id)
"""

from runapi_mcp.client._urls import ImageUrlPolicy, address_class
from runapi_mcp.client.client import (
    DEFAULT_BASE_URL,
    DEFAULT_DOWNLOAD_DEADLINE_S,
    DEFAULT_DOWNLOAD_READ_TIMEOUT_S,
    DEFAULT_MAX_ANSWER_BYTES,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_RETRY_POLICY,
    MAX_REDIRECTS,
    NO_API_KEY_MESSAGE,
    SPEAKS,
    RetryPolicy,
    RunAPIClient,
)
from runapi_mcp.client.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ImageUrlRefusedError,
    InsufficientCreditsError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RunAPIConnectionError,
    RunAPIError,
    RunAPIResponseError,
    RunAPIStatusError,
    RunAPITimeoutError,
    RunAPITransportError,
    ServerError,
)
from runapi_mcp.client.models import (
    Balance,
    CatalogStatus,
    DownloadResult,
    PriceQuote,
    PriceSchedule,
    PriceSchedules,
    RemoteImage,
    TaskInfo,
    TaskStatus,
    UploadedFile,
    normalize_status,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_DOWNLOAD_DEADLINE_S",
    "DEFAULT_DOWNLOAD_READ_TIMEOUT_S",
    "DEFAULT_MAX_ANSWER_BYTES",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "DEFAULT_RETRY_POLICY",
    "MAX_REDIRECTS",
    "NO_API_KEY_MESSAGE",
    "SPEAKS",
    "AuthenticationError",
    "BadRequestError",
    "Balance",
    "CatalogStatus",
    "ConflictError",
    "DownloadResult",
    "ImageUrlPolicy",
    "ImageUrlRefusedError",
    "InsufficientCreditsError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PriceQuote",
    "PriceSchedule",
    "PriceSchedules",
    "RateLimitedError",
    "RemoteImage",
    "RetryPolicy",
    "RunAPIClient",
    "RunAPIConnectionError",
    "RunAPIError",
    "RunAPIResponseError",
    "RunAPIStatusError",
    "RunAPITimeoutError",
    "RunAPITransportError",
    "ServerError",
    "TaskInfo",
    "TaskStatus",
    "UploadedFile",
    "address_class",
    "normalize_status",
]
