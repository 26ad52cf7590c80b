"""The MCP surface: tools, resources and server instructions."""

from runapi_mcp.server.app import INSTRUCTIONS, RunAPIMCPServer, ServerDeps, build_server
from runapi_mcp.server.results import ImageOut, TaskResult

__all__ = ["INSTRUCTIONS", "ImageOut", "RunAPIMCPServer", "ServerDeps", "TaskResult", "build_server"]
