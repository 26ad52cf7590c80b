"""runapi-mcp: an MCP server for RunAPI image models."""

__version__ = "0.1.0"
