#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the Turing test's browser test, when missing.
# The browser test (tests/test_turing_browser.py) skips with a reason when they are absent.
set -euo pipefail
if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    echo "chromium and chromedriver already installed: $(/usr/bin/chromium --version 2>/dev/null || true)"
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-browser: need root or sudo to run apt-get" >&2; exit 1; }
    SUDO="sudo"
fi
command -v apt-get >/dev/null || { echo "install-browser: apt-get not found (Debian/Ubuntu only)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium chromium-driver
/usr/bin/chromium --version
/usr/bin/chromedriver --version
