#!/usr/bin/env bash
# Debian packages the local services need: Java 17 (Kafka), Maven (resolves the Kafka jars),
# PostgreSQL 15 server binaries, Chromium + chromedriver (the console's browser tests),
# Prometheus: promtool (tests/deploy checks and unit-tests the alert rules) and the server
# binary (tests/reliability/test_alerts_e2e.py runs one on a free port).
# Installs only what is missing; no-op on a prepared machine.
set -euo pipefail
missing=()
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1; }
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
    missing+=(openjdk-17-jre-headless)
fi
command -v mvn >/dev/null 2>&1 || missing+=(maven)
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
echo "==> installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "error: ${missing[*]} missing and not root (install them, then rerun)" >&2; exit 1
    fi
fi
${SUDO:-} apt-get update
DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y --no-install-recommends "${missing[@]}"
# The tests start their own servers: one that the package started would hold :9090.
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    ${SUDO:-} service prometheus stop >/dev/null 2>&1 || true
fi
