# Everything a fresh Debian machine needs: `make serve` serves MCP, `make test` runs every
# check. Both create .venv and make sure the Docker engine and the sandbox image are there;
# `make test` also builds (once) and starts the Kubernetes test cluster, and stops it after.
VENV   := .venv
BIN    := $(VENV)/bin
PYTHON ?= python3

CONFORMANCE := .tools/conformance/node_modules/.bin/conformance
MCP_CLIENTS := .tools/mcp-clients/node_modules/.bin/mcpdo

.PHONY: run serve test lint docs unit venv engine image server-image conformance-tools mcp-clients client-venvs chromium cluster cluster-down clean

# The main job: serve MCP over stdio (add ARGS="--transport streamable-http" for HTTP).
serve: image
	$(BIN)/agent-sandbox serve $(ARGS)

run: image
	$(BIN)/agent-sandbox run examples/hello.py

# The images the Kubernetes tests run (loaded into the test cluster's containerd).
CLUSTER_IMAGES := agent-sandbox:minimal

# --durations: the slowest tests, so a run shows where CI's time budget goes.
test: lint docs image conformance-tools mcp-clients client-venvs chromium
	bash scripts/ensure-cluster.sh run $(CLUSTER_IMAGES) -- $(BIN)/pytest -q --durations=25

lint: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

# The documentation site (mkdocs.yml), strictly: a broken link or anchor fails it.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

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

# Cheap when nothing changed: docker's build cache answers, the Debian bases are reused. The
# 3.13 profiles are on Debian trixie: a second base, bootstrapped once like bookworm's.
image: venv engine
	$(BIN)/agent-sandbox image build --profile minimal --profile datascience \
		--profile minimal-3.13 --profile datascience-3.13

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
# SDK, on that same Node 22; and the MCP Apps host side (ext-apps' AppBridge, bundled by rolldown)
# that tests/mcp/test_viewer.py plays the run viewer against.
# Both generations of the TypeScript SDK (sdk 1.x, client 2.x) are in tests/mcp/test_clients.py's matrix.
mcp-clients: $(MCP_CLIENTS)

$(MCP_CLIENTS): $(CONFORMANCE)
	PATH="$(CURDIR)/.tools/conformance/node_modules/.bin:$$PATH" npm install --prefix .tools/mcp-clients \
		--no-audit --no-fund --loglevel=error @modelcontextprotocol/inspector@2.12.0 @modelcontextprotocol/sdk@1.32.2 \
		@modelcontextprotocol/client@2.3.1 @modelcontextprotocol/ext-apps@2.0.4 rolldown@1.3.3

# Python clients of other generations, each in a virtual environment of its own, from pinned
# requirements (a changed pin rebuilds the environment): the newest 1.x `mcp` SDK
# (tests/mcp/test_clients.py) and LangChain's MCP adapters, which require it
# (examples/agents/langchain_agent.py). pip's cache lives outside the clone, so a rebuild is quick.
client-venvs: .tools/venv-mcp1/.installed .tools/venv-langchain/.installed

define client-venv
	rm -rf $(@D)
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/pip install -q --upgrade pip
	$(@D)/bin/pip install -q -r $<
	touch $@
endef

.tools/venv-mcp1/.installed: tests/mcp/clients/requirements-mcp1.txt
	$(client-venv)

.tools/venv-langchain/.installed: examples/agents/requirements-langchain.txt
	$(client-venv)

# Debian's Chromium, headless: tests/mcp/test_viewer.py screenshots the run viewer.
chromium:
	bash scripts/ensure-chromium.sh

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache build/server-image build/site
