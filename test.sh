#!/usr/bin/env bash
# Lint, type-check and test vlmflow (the same command CI runs).
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || ./setup.sh
# the report test drives a real browser: Debian's chromium (never a downloaded one)
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check src tests bench scripts
.venv/bin/mypy
# the docs site, warnings as errors (CLI and API references are rendered from the code)
SITE="$(mktemp -d)"; trap 'rm -rf "$SITE"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$SITE"
.venv/bin/python -m pytest "$@"
