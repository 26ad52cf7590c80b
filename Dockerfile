# runapi-mcp: MCP server for RunAPI image models, over stdio (default) or HTTP.
#
#   DOCKER_BUILDKIT=1 docker build -t runapi-mcp .          # BuildKit: the default since Docker 23.0
#   docker run -i --rm -e RUNAPI_API_KEY -v runapi-data:/data runapi-mcp                  # stdio
#   docker run -d -p 8000:8000 -e RUNAPI_API_KEY -e RUNAPI_MCP_AUTH_TOKEN -v runapi-data:/data \
#       runapi-mcp serve --transport http --host 0.0.0.0                                  # HTTP: /mcp, /sse
#
# Two stages: the builder turns the checkout into wheels (the project's and every dependency's); the
# runtime stage installs those wheels and nothing else (no compilers, no test extras, no pip cache, no
# sources). Needs BuildKit (Docker's default builder since 23.0; also Podman/Buildah) for RUN --mount.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
# Only what the wheel is built from (the readme and licence files pyproject names), so edits elsewhere keep the cache.
COPY pyproject.toml README.md LICENSE ./
COPY src/ src/
# With the postgres extra (psycopg and its pool; libpq comes in psycopg's binary wheel): one image serves one
# instance on SQLite and several instances on one PostgreSQL database (docs/deployment.md).
RUN pip wheel --wheel-dir /wheels ".[postgres]"

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The wheels are bind-mounted from the builder, not copied: they never become a layer of this image.
# --no-index: exactly the builder's wheels (the project's, its dependencies' and the postgres extra's), no
# second resolution against PyPI.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/*.whl

# A fixed unprivileged uid/gid (not 1000, which is the first user on most hosts), numeric below so
# runAsNonRoot-style checks can see it is not root. /data is created and owned before VOLUME, so a new
# named volume starts out owned by this user; a bind mount must be writable by uid 10001.
RUN groupadd --gid 10001 runapi \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/runapi --shell /usr/sbin/nologin runapi \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY docker/healthcheck.py /usr/local/lib/runapi-mcp/healthcheck.py

ENV RUNAPI_MCP_HOME=/data
VOLUME ["/data"]

USER 10001:10001
WORKDIR /home/runapi

# HTTP transports listen here (`serve --transport http --host 0.0.0.0`); stdio uses no port.
EXPOSE 8000

# GET /health when the server was started with an HTTP transport; a stdio container is reported healthy,
# as it has no port and lives exactly as long as its client's pipe (see docker/healthcheck.py). The
# script reads the server's command line, so `--port` and `--host` given to `serve` are followed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/lib/runapi-mcp/healthcheck.py"]

# Both transports stop gracefully on SIGINT and SIGTERM (waiting calls answer with their task id, the
# store is closed; tasks resume on the next start). SIGINT also stops a plain Python program, so it is
# the safe choice for PID 1, where a signal with no handler is ignored.
STOPSIGNAL SIGINT

ENTRYPOINT ["runapi-mcp"]
CMD ["serve"]
