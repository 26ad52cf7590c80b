"""The MCP surface: tools, resources and instructions over the task manager. No HTTP here."""

from runapi_mcp.server.server import INSTRUCTIONS, RunAPIMCPServer, build_server
from runapi_mcp.server.tools import ImageTools, ServerDeps, TaskRequest

__all__ = ["INSTRUCTIONS", "ImageTools", "RunAPIMCPServer", "ServerDeps", "TaskRequest", "build_server"]
