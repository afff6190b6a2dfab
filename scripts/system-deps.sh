#!/usr/bin/env bash
# Installs the system binaries the project needs (redis-server) when they are missing.
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
echo "redis-server not found; installing it." >&2
if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
elif command -v brew >/dev/null 2>&1; then
    brew install redis
else
    echo "Install Redis (it provides redis-server), e.g. 'apt install redis-server' or 'brew install redis'." >&2
    exit 1
fi
