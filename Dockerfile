# The agent-sandbox MCP server as an image, for MCP clients that start servers with
# `docker run -i --rm ...` over stdio. Build it with scripts/build-server-image.sh, which
# resolves the project and its dependencies to wheels on the host (build/server-image/) and runs
# `docker build --network none`: nothing in this build touches a network.
#
# The server drives the host's Docker engine through its socket, mounted by the operator:
# docs/server-image.md says what that grants (everything) and how to run it.
#
# BASE: a public Python image where a registry answers, else the Debian root filesystem that
# `agent-sandbox image build` bootstraps (agent-sandbox-base:bookworm): CPython 3.11 on bookworm.
# The server resolves per-run requirements for each profile's own Python, whatever its own is.
ARG BASE=python:3.11-slim-bookworm

# The dependencies, in a virtualenv (Debian's Python is externally managed, and the debootstrap
# base has no pip: the pip wheel among the dependencies installs them and itself). A stage of
# its own, so the wheels never become a layer of the image, and a change to the project alone
# reuses the layer that holds them.
FROM ${BASE} AS dependencies
COPY build/server-image/deps/ /tmp/deps/
RUN set -eu; \
    python3 -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version"; \
    python3 -m venv --without-pip /opt/agent-sandbox; \
    /opt/agent-sandbox/bin/python "$(echo /tmp/deps/pip-*.whl)/pip" install --quiet --no-index \
        --disable-pip-version-check --no-warn-script-location /tmp/deps/*.whl

FROM ${BASE}
# A dedicated unprivileged user, not 1000 (the sandbox's uid), and its writable folders.
RUN set -eu; \
    groupadd --gid 10001 agent-sandbox; \
    useradd --uid 10001 --gid 10001 --home-dir /var/lib/agent-sandbox --create-home \
        --shell /usr/sbin/nologin agent-sandbox; \
    install -d -o 10001 -g 10001 -m 0700 /var/lib/agent-sandbox/workspaces /var/lib/agent-sandbox/runs; \
    install -d -o 10001 -g 10001 -m 0755 /var/cache/agent-sandbox
COPY --from=dependencies /opt/agent-sandbox /opt/agent-sandbox
COPY build/server-image/project/ /tmp/project/
RUN set -eu; \
    /opt/agent-sandbox/bin/pip install --quiet --no-index --no-deps --disable-pip-version-check \
        /tmp/project/*.whl; \
    /opt/agent-sandbox/bin/pip check --disable-pip-version-check; \
    rm -rf /tmp/project; \
    /opt/agent-sandbox/bin/agent-sandbox --help >/dev/null

# Image defaults (any AGENT_SANDBOX_* key can be overridden with `docker run -e`):
# - per-run requirements are off: they need a network for the server's resolver (uv, pip download) and the
#   wheel cache mounted at the SAME path as on the host, since the engine bind-mounts it into
#   sandboxes by its host path. docs/server-image.md shows how to turn them on.
# - workspaces and background runs' results live in the container (gone with it) unless a volume
#   is mounted there; the engine never mounts them, so any volume or host folder works.
ENV PATH=/opt/agent-sandbox/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8 \
    AGENT_SANDBOX_PACKAGES__ENABLED=false \
    AGENT_SANDBOX_PACKAGES__CACHE_DIR=/var/cache/agent-sandbox \
    AGENT_SANDBOX_WORKSPACES__DIR=/var/lib/agent-sandbox/workspaces \
    AGENT_SANDBOX_RUNS__DIR=/var/lib/agent-sandbox/runs

# Not io.agent-sandbox: that label marks sandbox containers, which servers reap.
LABEL org.opencontainers.image.title="agent-sandbox-server" \
      org.opencontainers.image.description="MCP server that runs Python in hardened, single-use Docker containers"

USER 10001:10001
WORKDIR /var/lib/agent-sandbox
ENTRYPOINT ["agent-sandbox"]
CMD ["serve"]
