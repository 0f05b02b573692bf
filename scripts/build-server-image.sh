#!/usr/bin/env bash
# Build the MCP server's own image (the Dockerfile at the repository root), with no registry and
# no network inside the build:
#   scripts/build-server-image.sh [IMAGE [DOCKER-BUILD-OPTION...]]
#   (IMAGE defaults to agent-sandbox-server:latest; options such as --no-cache go to docker build)
# 1. The host's pip makes the wheels: the project's (from a copy of the sources) and its
#    dependencies' (for CPython 3.11 on glibc 2.36, the image's platform, at the versions
#    `pip freeze` shows where it runs) under build/server-image/. Each set is rebuilt only when
#    its inputs change.
# 2. The base: $BASE if set, else python:3.11-slim-bookworm if here or pullable, else
#    agent-sandbox-base:bookworm, bootstrapped with debootstrap if missing.
# 3. docker build --network none. Cheap when nothing changed: the wheels and the layers are reused.
# Environment: PYTHON (default .venv/bin/python, else python3) runs pip; BASE forces a base.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${1:-agent-sandbox-server:latest}"
shift || true
OUT="$ROOT/build/server-image"
PUBLIC_BASE="python:3.11-slim-bookworm"
BOOTSTRAP_BASE="agent-sandbox-base:bookworm"
STARTED=$SECONDS

log() { echo "[build-server-image] $*" >&2; }
die() { log "$*"; exit 1; }

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip; set PYTHON to a Python 3.11 with pip"
docker info >/dev/null 2>&1 || die "no Docker engine answers; start one (scripts/ensure-engine.sh does, as root)"

# A digest of files (relative to ROOT), by path and content; __pycache__ and egg-info left out.
digest() {
  (cd "$ROOT" && find "$@" -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
}

# Wheels for the image's platform, whatever the host's (environment markers still follow the
# host's Python, so a host on 3.11 resolves exactly; others get a warning).
MACHINE="$(uname -m)"
PLATFORMS=()
for minor in $(seq 36 -1 5); do
  PLATFORMS+=(--platform "manylinux_2_${minor}_${MACHINE}")
  case $minor in 17) PLATFORMS+=(--platform "manylinux2014_${MACHINE}") ;;
                 12) PLATFORMS+=(--platform "manylinux2010_${MACHINE}") ;;
                  5) PLATFORMS+=(--platform "manylinux1_${MACHINE}") ;; esac
done
TARGET=(--only-binary=:all: --implementation cp --python-version 3.11
        --abi cp311 --abi abi3 --abi none "${PLATFORMS[@]}")
HOST_PY="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$HOST_PY" = 3.11 ] || log "warning: $PYTHON is Python $HOST_PY; markers are evaluated for it, not 3.11"

mkdir -p "$OUT"
# One build at a time per checkout (parallel test sessions): the wheel folders are the context.
exec 9>"$OUT/.lock"
flock 9 || die "cannot lock $OUT/.lock"
PIP=("$PYTHON" -m pip --disable-pip-version-check --no-input)

# The project's wheel, built from a copy so the working tree gets no build/ or egg-info;
# SOURCE_DATE_EPOCH makes it byte-identical for identical sources, so docker reuses its layer.
project_key="$(digest pyproject.toml README.md src)"
if [ "$(cat "$OUT/project.key" 2>/dev/null)" != "$project_key" ] || ! ls "$OUT"/project/*.whl >/dev/null 2>&1; then
  log "building the project's wheel ..."
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/src" "$tmp/"
  find "$tmp/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  SOURCE_DATE_EPOCH=315532800 "${PIP[@]}" wheel --quiet --no-deps --wheel-dir "$tmp/project" "$tmp" >&2
  rm -rf "$OUT/project" && mv "$tmp/project" "$OUT/project"
  echo "$project_key" >"$OUT/project.key"
else
  log "project wheel unchanged: $(basename "$OUT"/project/*.whl)"
fi

# Its dependencies at the versions installed where this runs (the venv the tests ran in, when
# there is one), so the image ships what was tested; downloaded again when those change.
"${PIP[@]}" freeze --all --exclude-editable >"$OUT/constraints.txt"  # --all: pip is a dependency too
deps_key="$(digest pyproject.toml) $(sha256sum <"$OUT/constraints.txt" | cut -c1-64) $MACHINE"
if [ "$(cat "$OUT/deps.key" 2>/dev/null)" != "$deps_key" ] || ! ls "$OUT"/deps/pip-*.whl >/dev/null 2>&1; then
  log "downloading the dependencies' wheels for CPython 3.11 on $MACHINE ..."
  rm -rf "$OUT/deps.new"
  "${PIP[@]}" download --quiet --dest "$OUT/deps.new" "${TARGET[@]}" --constraint "$OUT/constraints.txt" \
    "$OUT"/project/*.whl >&2
  rm -f "$OUT"/deps.new/agent_sandbox-*.whl  # pip copies the requirement itself too
  rm -rf "$OUT/deps" && mv "$OUT/deps.new" "$OUT/deps"
  echo "$deps_key" >"$OUT/deps.key"
fi
log "$(find "$OUT/deps" -name '*.whl' | wc -l) dependency wheel(s), $(du -sh "$OUT/deps" | cut -f1)"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
if [ -n "${BASE:-}" ]; then
  have_image "$BASE" || docker pull "$BASE" >&2 || die "base $BASE is neither here nor pullable"
elif have_image "$PUBLIC_BASE"; then
  BASE="$PUBLIC_BASE"
elif have_image "$BOOTSTRAP_BASE"; then
  BASE="$BOOTSTRAP_BASE"
else
  log "pulling $PUBLIC_BASE ..."
  if docker pull "$PUBLIC_BASE" >&2; then
    BASE="$PUBLIC_BASE"
  else
    log "no registry answers; bootstrapping Debian as $BOOTSTRAP_BASE (about a minute) ..."
    "$PYTHON" - <<'EOF' >&2
import logging
import docker
from agent_sandbox.images.build import bootstrap_base
logging.basicConfig(level=logging.INFO, format="[build-server-image]   %(message)s")
bootstrap_base(docker.from_env())
EOF
    BASE="$BOOTSTRAP_BASE"
  fi
fi

log "docker build -t $IMAGE from $BASE (no network) ..."
docker build --network none --build-arg "BASE=$BASE" --tag "$IMAGE" "$@" --file "$ROOT/Dockerfile" "$ROOT" >&2
log "built $IMAGE ($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')) in $((SECONDS - STARTED)) s"
echo "$IMAGE"
