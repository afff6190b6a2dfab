#!/usr/bin/env bash
# Installs the system binaries the project needs, each one that is missing:
# redis-server (the suite and `make demo` start their own), docker-compose (the suite
# checks docker-compose.yml with `docker-compose config`), and Chromium with its driver
# (tests/integration/test_flower_browser.py drives Flower's pages in a headless browser).
set -euo pipefail

apt_packages=()   # Debian package names
brew_packages=()  # Homebrew formula names
need() {  # need BINARY APT_PACKAGE BREW_FORMULA
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "$1 not found; installing it." >&2
    apt_packages+=("$2")
    brew_packages+=("$3")
}
need redis-server redis-server redis
need docker-compose docker-compose docker-compose
# Homebrew ships both as casks; `brew install NAME` falls back to the cask of that name.
need chromium chromium chromium
need chromedriver chromium-driver chromedriver

[ ${#apt_packages[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
elif command -v brew >/dev/null 2>&1; then
    brew install "${brew_packages[@]}"
else
    echo "Install ${apt_packages[*]}, e.g. 'apt install ${apt_packages[*]}'" \
         "or 'brew install ${brew_packages[*]}'." >&2
    exit 1
fi
