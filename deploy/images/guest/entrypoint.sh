#!/bin/sh
# Placeholder guest entrypoint until the agent exists (a later issue replaces it with the agent): starts the
# engine named by TROVE_ENGINE (mariadb | postgresql | redis) in the foreground on its default port, with
# its data dir under /var/lib/trove/<engine>, initialised on first start. The engine process replaces this
# script as PID 1, so `podman stop` reaches it directly.
set -eu

engine=${TROVE_ENGINE:-}
data=/var/lib/trove/$engine

case $engine in
mariadb)
	# --no-defaults: Debian's /etc/mysql config must not shape the engine; every setting is given here.
	# The socket path is absolute because mariadb-backup fails with a relative one; it is the path
	# Debian's client looks at by default, so `mariadb` inside the guest connects as root (unix_socket auth).
	if [ ! -d "$data/mysql" ]; then
		echo "trove-guest: initialising MariaDB in $data" >&2
		# Into DIR.init, renamed when complete: an interrupted first start leaves no half-made data dir.
		rm -rf "$data.init"
		mkdir -p "$data.init"
		mariadb-install-db --no-defaults --user=root --datadir="$data.init" \
			--auth-root-authentication-method=socket --skip-test-db >/dev/null
		rmdir "$data" 2>/dev/null || true # an empty dir left by hand; mount volumes at /var/lib/trove
		mv "$data.init" "$data"
	fi
	mkdir -p /run/mysqld
	exec mariadbd --no-defaults --user=root --datadir="$data" --port=3306 --bind-address=0.0.0.0 \
		--socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid
	;;
postgresql)
	# initdb and postgres refuse to run as root.
	bin=/usr/lib/postgresql/15/bin
	if [ ! -f "$data/PG_VERSION" ]; then
		echo "trove-guest: initialising PostgreSQL in $data" >&2
		mkdir -p "$(dirname "$data")"
		rm -rf "$data.init"
		install -d -o postgres -g postgres -m 700 "$data.init"
		runuser -u postgres -- "$bin/initdb" -D "$data.init" -U postgres -E UTF8 --locale=C.UTF-8 \
			--auth-local=peer --auth-host=scram-sha-256 >/dev/null
		rmdir "$data" 2>/dev/null || true # an empty dir left by hand; mount volumes at /var/lib/trove
		mv "$data.init" "$data"
	fi
	install -d -o postgres -g postgres -m 2775 /run/postgresql
	# setpriv, not runuser, for the server: runuser would stay PID 1 and answer `podman stop` with SIGTERM
	# to postgres and SIGKILL 2 s later; with setpriv postgres is PID 1 and shuts down on its own terms.
	exec setpriv --reuid=postgres --regid=postgres --init-groups \
		"$bin/postgres" -D "$data" -p 5432 -c listen_addresses='*' -c unix_socket_directories=/run/postgresql
	;;
redis)
	# repl-diskless-sync-delay 0: a replica or `redis-cli --rdb` gets its snapshot at once, not after 5 s.
	mkdir -p "$data"
	exec redis-server --port 6379 --dir "$data" --dbfilename dump.rdb --daemonize no \
		--repl-diskless-sync-delay 0
	;;
*)
	echo "trove-guest: set TROVE_ENGINE to mariadb, postgresql or redis (got '$engine')" >&2
	exit 64
	;;
esac
