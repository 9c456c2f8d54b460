#!/bin/sh
# Exits 0 when the guest's engine (TROVE_ENGINE) answers a query on its local socket; for wait strategies
# (`podman exec GUEST trove-guest-ready`, testcontainers-go wait.ForExec). Placeholder, like the entrypoint.
set -eu
case ${TROVE_ENGINE:-} in
mariadb) exec mariadb --connect-timeout=2 -N -e 'select 1' >/dev/null 2>&1 ;;
postgresql) exec runuser -u postgres -- psql -X -q -t -c 'select 1' >/dev/null 2>&1 ;;
redis) [ "$(redis-cli ping 2>/dev/null)" = PONG ] ;;
*) exit 64 ;;
esac
