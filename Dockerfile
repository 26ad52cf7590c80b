# runapi-mcp: MCP server for RunAPI image models, over stdio.
#
#   docker build -t runapi-mcp .
#   docker run -i --rm -e RUNAPI_API_KEY -v runapi-data:/data runapi-mcp
#
# -i is required: MCP travels over stdin/stdout. Images are saved under /data/images.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package (and only what it needs to build) system-wide, then drop the sources.
COPY pyproject.toml README.md /tmp/runapi-mcp/
COPY src/ /tmp/runapi-mcp/src/
RUN pip install /tmp/runapi-mcp && rm -rf /tmp/runapi-mcp

# Run as an unprivileged user that owns the image library.
RUN groupadd --gid 1000 runapi \
    && useradd --uid 1000 --gid runapi --create-home --shell /usr/sbin/nologin runapi \
    && mkdir -p /data \
    && chown runapi:runapi /data

ENV RUNAPI_MCP_HOME=/data
VOLUME /data

USER runapi
WORKDIR /home/runapi

ENTRYPOINT ["runapi-mcp"]
CMD ["serve"]
