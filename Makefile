# Everything a fresh Debian machine needs: `make serve` serves MCP, `make test` runs every
# check. Both create .venv and make sure the Docker engine and the sandbox image are there;
# `make test` also builds (once) and starts the Kubernetes test cluster, and stops it after.
VENV   := .venv
BIN    := $(VENV)/bin
PYTHON ?= python3

CONFORMANCE := .tools/conformance/node_modules/.bin/conformance
MCP_CLIENTS := .tools/mcp-clients/node_modules/.bin/mcpdo

.PHONY: run serve test lint unit venv engine image server-image conformance-tools mcp-clients cluster cluster-down clean

# The main job: serve MCP over stdio (add ARGS="--transport streamable-http" for HTTP).
serve: image
	$(BIN)/agent-sandbox serve $(ARGS)

run: image
	$(BIN)/agent-sandbox run examples/hello.py

# The images the Kubernetes tests run (loaded into the test cluster's containerd).
CLUSTER_IMAGES := agent-sandbox:minimal

test: lint image conformance-tools mcp-clients
	bash scripts/ensure-cluster.sh run $(CLUSTER_IMAGES) -- $(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,examples,bench]'
	touch $@

engine:
	bash scripts/ensure-engine.sh

# Cheap when nothing changed: docker's build cache answers, the Debian base is reused.
image: venv engine
	$(BIN)/agent-sandbox image build --profile minimal --profile datascience

# The MCP server's own image (Dockerfile at the root): wheels made on the host, no network in the build.
server-image: venv engine
	bash scripts/build-server-image.sh agent-sandbox-server:latest

# The Kubernetes test cluster, left running (tests use it with SANDBOX_TESTS_KUBECONFIG set to
# /var/lib/agent-sandbox-kubernetes/admin.kubeconfig); `make cluster-down` stops it.
cluster: image
	bash scripts/ensure-cluster.sh up $(CLUSTER_IMAGES)

cluster-down:
	bash scripts/ensure-cluster.sh down

# The MCP conformance suite needs Node >= 22; npm's `node` package brings one along.
conformance-tools: $(CONFORMANCE)

$(CONFORMANCE):
	npm install --prefix .tools/conformance --no-audit --no-fund --loglevel=error \
		node@22 @modelcontextprotocol/conformance@0.1.16

# Clients that speak MCP Tasks (tests/mcp/test_tasks.py): the Inspector's mcpdo and the TypeScript
# SDK, on that same Node 22.
mcp-clients: $(MCP_CLIENTS)

$(MCP_CLIENTS): $(CONFORMANCE)
	PATH="$(CURDIR)/.tools/conformance/node_modules/.bin:$$PATH" npm install --prefix .tools/mcp-clients \
		--no-audit --no-fund --loglevel=error @modelcontextprotocol/inspector@2.12.0 @modelcontextprotocol/sdk@1.32.2

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache build/server-image
