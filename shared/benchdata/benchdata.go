// Package benchdata generates the benchmark databases (docs/benchmarks.md, "Engine backup and restore"):
// a database `bench` of tables with realistic mixed columns, grown inside the engine itself (INSERT ...
// SELECT from a sequence, so nothing crosses the wire but the statements) until it reaches a target size.
// The engine benchmark and `trovectl guest gen` (the bench:gen task) use it, so both make the same data.
package benchdata

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/mariadb"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
)

// Query runs one SQL script in the engine (database bench where it exists) and returns its output: bare
// values, one row per line, columns separated by '\t' (MariaDB) or '|' (PostgreSQL).
type Query func(ctx context.Context, sql string) (string, error)

// Rows per generated table: ~115 MiB of MariaDB (InnoDB, with its secondary index), ~110 MiB of PostgreSQL.
const (
	MariaDBRows    = 500000
	PostgreSQLRows = 600000
)

// MariaDBTable is table n of bench: ids 1..rows, ints, a decimal, a date, short text from a vocabulary plus
// numbers (compresses well), a hex digest (compresses ~2x) and 32 random bytes (incompressible); ~230
// bytes a row on disk.
func MariaDBTable(n, rows int) string {
	return fmt.Sprintf(`CREATE TABLE bench.t_%03[1]d (id BIGINT PRIMARY KEY, customer INT NOT NULL, qty SMALLINT NOT NULL, amount DECIMAL(12,2) NOT NULL,
  created DATETIME NOT NULL, status VARCHAR(16) NOT NULL, note VARCHAR(200) NOT NULL, digest CHAR(32) NOT NULL, token VARBINARY(32) NOT NULL, KEY (customer)) ENGINE=InnoDB;
INSERT INTO bench.t_%03[1]d SELECT seq, (seq * 7919) %% 1000003, seq %% 97, (seq %% 100000) / 3.7, '2026-01-01' + INTERVAL (seq %% 31536000) SECOND,
  ELT(1 + seq %% 5, 'new', 'paid', 'shipped', 'returned', 'cancelled'),
  CONCAT_WS(' ', ELT(1 + seq %% 8, 'alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel'), 'order', seq, 'for customer', (seq * 7919) %% 1000003, ELT(1 + (seq DIV 8) %% 6, 'express', 'standard', 'pickup', 'freight', 'gift wrapped', 'priority'), 'note', %[1]d),
  MD5(CONCAT(seq, '-', %[1]d)), RANDOM_BYTES(32)
FROM seq_1_to_%[2]d;
ANALYZE TABLE bench.t_%03[1]d;`, n, rows)
}

// PostgreSQLTable is the PostgreSQL twin of MariaDBTable (~190 bytes a row on disk with its primary key).
func PostgreSQLTable(n, rows int) string {
	return fmt.Sprintf(`SET synchronous_commit = off;
CREATE TABLE t_%03[1]d (id bigint NOT NULL, customer int NOT NULL, qty smallint NOT NULL, amount numeric(12,2) NOT NULL,
  created timestamptz NOT NULL, status text NOT NULL, note text NOT NULL, digest text NOT NULL, token bytea NOT NULL);
INSERT INTO t_%03[1]d SELECT i, (i * 7919) %% 1000003, i %% 97, round((i %% 100000) / 3.7, 2), '2026-01-01'::timestamptz + (i %% 31536000) * interval '1 second',
  (ARRAY['new', 'paid', 'shipped', 'returned', 'cancelled'])[1 + i %% 5],
  concat_ws(' ', (ARRAY['alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel'])[1 + i %% 8], 'order', i, 'for customer', (i * 7919) %% 1000003,
    (ARRAY['express', 'standard', 'pickup', 'freight', 'gift wrapped', 'priority'])[1 + (i / 8) %% 6], 'note', %[1]d),
  md5(i || '-' || %[1]d), gen_random_bytes(32)
FROM generate_series(1::bigint, %[2]d) i;
ALTER TABLE t_%03[1]d ADD PRIMARY KEY (id);
CREATE INDEX ON t_%03[1]d (customer);
ANALYZE t_%03[1]d;`, n, rows)
}

// Engine is what Grow needs of an engine: how to prepare bench, measure it and make table n.
type Engine struct {
	Name string
	// Prepare creates database bench (and what the tables need) if missing; admin runs it outside bench.
	Prepare func(ctx context.Context, admin, bench Query) error
	// SizeSQL answers "<bytes><sep><tables>" for bench.
	SizeSQL string
	Table   func(n, rows int) string
	Rows    int
	// Finish runs once the target is reached (a checkpoint, so the files hold what was written).
	Finish string
}

// MariaDB and PostgreSQL are the two generated engines.
var (
	MariaDB = Engine{
		Name: "mariadb",
		Prepare: func(ctx context.Context, admin, _ Query) error {
			_, err := admin(ctx, "CREATE DATABASE IF NOT EXISTS bench")
			return err
		},
		SizeSQL: "SELECT COALESCE(SUM(data_length + index_length), 0), COUNT(*) FROM information_schema.tables WHERE table_schema = 'bench'",
		Table:   MariaDBTable, Rows: MariaDBRows,
	}
	PostgreSQL = Engine{
		Name: "postgresql",
		Prepare: func(ctx context.Context, admin, bench Query) error {
			out, err := admin(ctx, "SELECT count(*) FROM pg_database WHERE datname = 'bench'")
			if err != nil {
				return err
			}
			if strings.TrimSpace(out) == "0" {
				if _, err := admin(ctx, "CREATE DATABASE bench"); err != nil {
					return err
				}
			}
			_, err = bench(ctx, "CREATE EXTENSION IF NOT EXISTS pgcrypto")
			return err
		},
		SizeSQL: "SELECT pg_database_size('bench'), (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')",
		Table:   PostgreSQLTable, Rows: PostgreSQLRows,
		Finish: "CHECKPOINT",
	}
)

// ByName returns the generated engine of that name.
func ByName(name string) (Engine, error) {
	switch name {
	case MariaDB.Name:
		return MariaDB, nil
	case PostgreSQL.Name:
		return PostgreSQL, nil
	}
	return Engine{}, errs.BadRequestf("no benchmark data for engine %q (mariadb or postgresql)", name)
}

// Size returns bench's size in bytes and its table count.
func (e Engine) Size(ctx context.Context, bench Query) (int64, int, error) {
	out, err := bench(ctx, e.SizeSQL)
	if err != nil {
		return 0, 0, err
	}
	f := strings.FieldsFunc(strings.TrimSpace(out), func(r rune) bool { return r == '\t' || r == '|' || r == ' ' })
	if len(f) != 2 {
		return 0, 0, errs.Internalf("%s: size query answered %q", e.Name, out)
	}
	size, err1 := strconv.ParseInt(f[0], 10, 64)
	tables, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return 0, 0, errs.Internalf("%s: size query answered %q", e.Name, out)
	}
	return size, tables, nil
}

// Grow adds tables to bench, parallel at a time (table numbers continue after the existing ones), until
// it holds at least target bytes, and returns its size. rows <= 0 takes the engine's default; progress,
// if not nil, hears the size after each round.
func (e Engine) Grow(ctx context.Context, admin, bench Query, target int64, rows, parallel int, progress func(size int64, tables int)) (int64, error) {
	if rows <= 0 {
		rows = e.Rows
	}
	parallel = max(parallel, 1)
	if err := e.Prepare(ctx, admin, bench); err != nil {
		return 0, err
	}
	for {
		have, tables, err := e.Size(ctx, bench)
		if err != nil {
			return 0, err
		}
		if progress != nil {
			progress(have, tables)
		}
		if have >= target {
			if e.Finish != "" {
				if _, err := bench(ctx, e.Finish); err != nil {
					return 0, err
				}
			}
			return have, nil
		}
		errc := make(chan error, parallel)
		for i := range parallel {
			go func() {
				_, err := bench(ctx, e.Table(tables+i+1, rows))
				errc <- err
			}()
		}
		var first error
		for range parallel {
			if err := <-errc; err != nil && first == nil {
				first = err
			}
		}
		if first != nil {
			return 0, first
		}
	}
}

// AgentQueries are admin and bench queries through a guest's agent: the engine's own client (mariadb or
// psql) run by exec with an argument vector, on the local socket, as the strategies connect.
func AgentQueries(g guestclient.Runner, reg guestv1.Registration) (admin, bench Query, err error) {
	switch reg.Engine {
	case MariaDB.Name:
		q := func(db string) Query {
			return func(ctx context.Context, sql string) (string, error) {
				args := append(mariadb.ClientArgs(), "-N", "-B")
				if db != "" {
					args = append(args, "-D", db)
				}
				return guestclient.Capture(ctx, g, "mariadb", append(args, "-e", sql)...)
			}
		}
		return q(""), q("bench"), nil
	case PostgreSQL.Name:
		port := reg.Status.Port
		if port == 0 {
			port = 5432
		}
		q := func(db string) Query {
			return func(ctx context.Context, sql string) (string, error) {
				return guestclient.Capture(ctx, g, "psql", "-h", "/run/postgresql", "-p", strconv.Itoa(port), "-U", "postgres",
					"-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql)
			}
		}
		return q("postgres"), q("bench"), nil
	}
	return nil, nil, errs.BadRequestf("guest %s runs %q; benchmark data is for mariadb and postgresql guests", reg.Instance, reg.Engine)
}
