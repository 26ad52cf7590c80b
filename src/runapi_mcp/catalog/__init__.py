"""The catalog of RunAPI image actions: routes, models, fields, and request validation.

Everything the server sends upstream is checked here first, so a bad value costs nothing:
the error names the field and what it allows.
"""

from runapi_mcp.catalog._catalog import (
    ALIASES,
    EDIT_ENDPOINTS,
    ActionSpec,
    Catalog,
    CatalogError,
    FieldSpec,
    ModelSpec,
    PreparedRequest,
    RequestKind,
    get_catalog,
)

__all__ = [
    "ALIASES",
    "EDIT_ENDPOINTS",
    "ActionSpec",
    "Catalog",
    "CatalogError",
    "FieldSpec",
    "ModelSpec",
    "PreparedRequest",
    "RequestKind",
    "get_catalog",
]
