"""The base of the errors whose text is the whole answer a caller sees."""

from __future__ import annotations


class UserError(Exception):
    """An error that is the caller's to fix: a bad argument, an unusable image, an unknown task, a cursor
    this server did not hand out, no key, the spend cap, a declined confirmation.

    Its message is written for the user (and the model): it names the field and what it takes, and says
    that nothing was sent or spent. The MCP server (``server.server``) answers a tool call that raised one
    with that message alone; any other exception is an internal error there (the details go to the log).
    So a new error of this kind needs only this base, in whichever layer raises it. Subclasses keep their
    builtin base as well (``ValueError``, ``KeyError``) for code that catches those.
    """
