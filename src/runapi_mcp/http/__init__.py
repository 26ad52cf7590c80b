"""Shared deployments: the MCP server over streamable HTTP and SSE, with auth, health, file and webhook routes.

The top layer beside the CLI: it composes the MCP server (``runapi_mcp.server``) with Starlette and
uvicorn. Nothing below imports it.
"""
