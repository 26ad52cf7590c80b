"""The MCP resources: a task's state, a library image, the model catalog (an index, and each model)."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError

from runapi_mcp.catalog import Catalog, CatalogError
from runapi_mcp.server.catalog_view import MODELS_URI, model_details, model_index
from runapi_mcp.server.history import IMAGE_TEMPLATE, TASK_TEMPLATE
from runapi_mcp.server.icons import icon_for
from runapi_mcp.server.results import task_result
from runapi_mcp.tasks import TaskManager, UnknownTaskError


class LibraryResources:
    """Resource handlers over the task manager and its image library."""

    def __init__(self, manager: TaskManager, catalog: Catalog) -> None:
        self.manager = manager
        self.catalog = catalog

    def register(self, server: MCPServer[Any]) -> None:
        server.resource(
            TASK_TEMPLATE,
            name="task",
            mime_type="application/json",
            description="A task's state as JSON (the same fields as the task tools' results)",
        )(self.task)
        server.resource(
            IMAGE_TEMPLATE,
            name="image",
            mime_type="image/png",
            description="A picture from the local library, full size",
        )(self.image)
        server.resource(
            MODELS_URI,
            name="models",
            title="Image models",
            mime_type="application/json",
            description="Every RunAPI image model in a few words (list_models' index)",
            icons=icon_for("models"),
        )(self.models)
        server.resource(
            MODELS_URI + "/{model}",
            name="model",
            title="Image model",
            mime_type="application/json",
            description="One model's actions and fields (types, allowed values, limits), as list_models(model=...);"
            " a slug with a slash is written with %2F",
            icons=icon_for("models"),
        )(self.model)

    async def task(self, task_id: str) -> str:
        try:
            record = await self.manager.get(task_id)
        except UnknownTaskError as exc:
            raise ResourceNotFoundError(str(exc)) from None
        return task_result(record, self.manager.estimated_progress(record)).model_dump_json(indent=2)

    async def image(self, image_id: str) -> bytes:
        # Another user's image is "not in the library" to this caller.
        data = await self.manager.images.read(image_id) if await self.manager.find_image(image_id) else None
        if data is None:
            raise ResourceNotFoundError(f"no image {image_id[:200]!r} in the library")
        return data

    def models(self) -> str:
        return model_index(self.catalog).model_dump_json(indent=1, exclude={"details"})

    def model(self, model: str) -> str:
        try:
            listing = model_details(self.catalog, model=model)
        except CatalogError as exc:  # names the close matches
            raise ResourceNotFoundError(str(exc)) from None
        return listing.model_dump_json(indent=1)
