"""The catalog of RunAPI image actions: routes, models, fields, and request validation.

Everything the server sends upstream is checked here first, so a bad value costs nothing:
the error names the field and what it allows. ``Catalog.validate`` checks a tool call before
any image is uploaded; ``ValidatedRequest.with_images`` then builds the request body.
"""

from runapi_mcp.catalog._catalog import (
    ALIASES,
    ARRAY_MAX_ITEMS,
    DECOMPOSE_LAYERS_MAX_OUTPUTS,
    EDIT_ENDPOINTS,
    IMAGE_ARRAY_MAX_ITEMS,
    JSON_SAFE_INTEGER,
    MAX_PARAMS,
    OUTPUT_COUNT_FIELDS,
    OUTPUT_COUNT_MAX,
    PROMPT_MAX_LENGTH,
    SPLIT_IMAGES_OUTPUTS,
    STRING_MAX_LENGTH,
    ActionSpec,
    Catalog,
    CatalogError,
    FieldSpec,
    ItemSpec,
    ModelSpec,
    PreparedRequest,
    Presence,
    RequestKind,
    Rule,
    ValidatedRequest,
    get_catalog,
    is_http_url,
    text_problem,
)
from runapi_mcp.catalog.defaults import DEFAULT_MODEL, DEFAULT_UPSCALE_MODEL, SOFT_DEFAULTS

__all__ = [
    "ALIASES",
    "ARRAY_MAX_ITEMS",
    "DECOMPOSE_LAYERS_MAX_OUTPUTS",
    "DEFAULT_MODEL",
    "DEFAULT_UPSCALE_MODEL",
    "EDIT_ENDPOINTS",
    "IMAGE_ARRAY_MAX_ITEMS",
    "JSON_SAFE_INTEGER",
    "MAX_PARAMS",
    "OUTPUT_COUNT_FIELDS",
    "OUTPUT_COUNT_MAX",
    "PROMPT_MAX_LENGTH",
    "SOFT_DEFAULTS",
    "SPLIT_IMAGES_OUTPUTS",
    "STRING_MAX_LENGTH",
    "ActionSpec",
    "Catalog",
    "CatalogError",
    "FieldSpec",
    "ItemSpec",
    "ModelSpec",
    "PreparedRequest",
    "Presence",
    "RequestKind",
    "Rule",
    "ValidatedRequest",
    "get_catalog",
    "is_http_url",
    "text_problem",
]
