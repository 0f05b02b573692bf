#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is at /usr/bin/chromium: the run viewer's test
# (tests/mcp/test_viewer.py) drives it through Playwright, which downloads no browser of
# its own. On Debian as root: install the chromium package when missing. Elsewhere: say plainly
# what is missing. Idempotent.
set -euo pipefail

log() { echo "[ensure-chromium] $*" >&2; }

[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  log "no /usr/bin/chromium: install Debian's chromium package (as root: apt-get install chromium)"
  exit 1
fi
log "installing chromium ..."
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq chromium >&2 || { apt-get update -qq >&2 && apt-get install -y -qq chromium >&2; }
[ -x /usr/bin/chromium ] || { log "the chromium package did not bring /usr/bin/chromium"; exit 1; }
log "installed $(/usr/bin/chromium --version 2>/dev/null)"
