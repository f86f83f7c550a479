#!/usr/bin/env bash
# The browser tests (tests/browser) drive Debian's Chromium. Install it when it is missing
# (as root, or with sudo); otherwise say how. The tests themselves fail, never skip, without it.
set -euo pipefail
if [ -n "${CHROMIUM:-}" ] || [ -x /usr/lib/chromium/chromium ] || command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; else
    echo "setup: Chromium is missing and I cannot install it: run 'sudo apt-get install chromium' (the browser tests need it)"
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: Chromium is missing and there is no apt-get: install Chromium and set \$CHROMIUM to its binary"
  exit 0
fi
echo "setup: installing Debian's chromium for the browser tests"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
