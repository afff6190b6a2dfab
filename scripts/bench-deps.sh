#!/usr/bin/env bash
# Installs what `make bench` needs beyond scripts/system-deps.sh: Postfix, for the run
# against a real MTA (benchmarks/postfix.py starts a private instance of its own and
# never touches the system's). Preseeded as "No configuration": no main.cf is written
# and no system Postfix starts. Without apt-get, or when the install fails, the bench
# skips that run.
set -euo pipefail

[ -x /usr/sbin/postfix ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "Postfix not found and no apt-get: the bench skips its Postfix run." >&2
    exit 0
fi
echo "postfix not found; installing it." >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! {
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections &&
    $sudo apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postfix >/dev/null
}; then
    echo "Installing Postfix failed: the bench skips its Postfix run." >&2
fi
