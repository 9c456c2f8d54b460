//go:build integration

package backup_test

// PostgreSQL backups (pg_basebackup, pg_dump) and restores through the services, on real guests: the
// storage (fs), backup and restore services run in this process on the test kit's NATS (startPGRStack in
// integration_redis_test.go); the guests are containers of the guest image with their agents. The dataset
// has several databases (one with a unicode name), roles with passwords and memberships, contrib extensions
// (hstore, pg_trgm), sequences, large objects, arrays, jsonb, views, functions, triggers, grants and a table
// of a million rows. Source and restored guests are compared by canonical dumps of every database and of
// the globals, by the databases' properties, and by an md5 of the big table's ordered rows.
//
//	go tool task image:guest
//	cd services/backup && go test -tags integration -run IntegrationPostgreSQL -v .

import (
	"strings"
	"testing"
	"time"

	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/testkit"
)

// pgDataset is run by psql as postgres on database postgres; \connect switches databases.
const pgDataset = `
CREATE ROLE app LOGIN PASSWORD 'app-pw-not-a-secret';
CREATE ROLE reader NOLOGIN;
CREATE ROLE "Ünïcødé rôle" LOGIN PASSWORD 'another-test-pw' VALID UNTIL '2031-01-01';
GRANT reader TO app;
CREATE DATABASE shop OWNER app;
CREATE DATABASE "ünïcødé db ✓";
CREATE DATABASE analytics;
ALTER DATABASE analytics SET work_mem = '8MB';
COMMENT ON DATABASE shop IS 'the shop — ✓';
CREATE TABLE public.in_postgres (id int PRIMARY KEY, note text);
INSERT INTO public.in_postgres VALUES (1, 'in the postgres database');

\connect shop
CREATE EXTENSION hstore;
CREATE EXTENSION pg_trgm;
SET ROLE app;
CREATE SCHEMA sales;
CREATE SEQUENCE sales.order_no START 1000 INCREMENT 7;
CREATE TYPE sales.status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE sales.customers (id serial PRIMARY KEY, name text NOT NULL, tags text[], attrs hstore, profile jsonb, created timestamptz NOT NULL DEFAULT '2026-01-02 03:04:05.678901+00');
CREATE TABLE sales.orders (id bigint PRIMARY KEY DEFAULT nextval('sales.order_no'), customer int NOT NULL REFERENCES sales.customers, total numeric(12,2) NOT NULL, status sales.status NOT NULL DEFAULT 'new', matrix int[][]);
CREATE TABLE sales.audit (id bigserial PRIMARY KEY, what text, at bigint);
CREATE TABLE sales.docs (id int PRIMARY KEY, doc oid);
INSERT INTO sales.customers (name, tags, attrs, profile) VALUES
  ('Zoë Ångström', '{a,"b c","ü"}', 'k=>v, "key two"=>"value two"', '{"ü": [1, 2.5, null, true], "nested": {"x": "y"}}'),
  ('山田太郎', '{}', NULL, '{"lang": "日本語"}'),
  ('O''Brien', '{NULL,"quote \" in"}', 'a=>NULL', '[]'),
  ('emoji 😀🎉', NULL, '', 'null');
CREATE FUNCTION sales.audit_order() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO sales.audit (what, at) VALUES ('order ✓', NEW.id); RETURN NEW; END $$;
CREATE TRIGGER orders_ai AFTER INSERT ON sales.orders FOR EACH ROW EXECUTE FUNCTION sales.audit_order();
INSERT INTO sales.orders (customer, total, status, matrix) SELECT 1 + i % 4, i * 1.25, (ARRAY['new','paid','shipped'])[1 + i % 3]::sales.status, ARRAY[[i, i + 1], [i + 2, i + 3]] FROM generate_series(1, 2000) i;
CREATE VIEW sales.paid AS SELECT c.name, sum(o.total) AS total FROM sales.customers c JOIN sales.orders o ON o.customer = c.id WHERE o.status = 'paid' GROUP BY c.name;
CREATE INDEX customers_name_trgm ON sales.customers USING gin (name gin_trgm_ops);
RESET ROLE;
INSERT INTO sales.docs VALUES (1, lo_from_bytea(0, '\x00010203feff'::bytea)), (2, lo_from_bytea(0, convert_to(repeat('große Datei ', 100000), 'UTF8')));
GRANT USAGE ON SCHEMA sales TO reader;
GRANT SELECT ON ALL TABLES IN SCHEMA sales TO reader;

\connect "ünïcødé db ✓"
CREATE TABLE "名前" ("ключ" int PRIMARY KEY, "データ" text, "ε" bytea);
INSERT INTO "名前" VALUES (1, 'こんにちは世界', '\x00ff00ff'), (2, '🙂🙃', decode(repeat('deadbeef', 262144), 'hex')), (3, NULL, '');

\connect analytics
CREATE TABLE big (id bigint PRIMARY KEY, grp int NOT NULL, payload text NOT NULL, v double precision);
INSERT INTO big SELECT i, i % 97, md5(i::text), i / 7.0 FROM generate_series(1, 1000000) i;
CREATE MATERIALIZED VIEW big_groups AS SELECT grp, count(*) AS n, sum(v) AS s FROM big GROUP BY grp;
ANALYZE big;
`

// pgSQL runs psql as the postgres user inside a guest (the harness, not the system under test) and returns
// its unaligned, tuples-only output.
func pgSQL(t *testing.T, g *testkit.Guest, db, script string) string {
	t.Helper()
	return pgrShell(t, g, `printf '%s' "$2" | runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -h /run/postgresql -d "$1" -f -`, "dbname="+quoteConnValue(db), script)
}

func quoteConnValue(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// pgCanonical is the comparable content of a PostgreSQL instance: the globals (roles with their password
// hashes, memberships), the databases' properties, a plain pg_dump of every non-template database (schema,
// data, large objects, sequence values), and an md5 of the big table's rows in order.
func pgCanonical(t *testing.T, g *testkit.Guest) string {
	t.Helper()
	// pg_dump 15.18 opens and closes a plain dump with \restrict <random key>: not content.
	const strip = ` | grep -v '^\\\(un\)\?restrict '`
	var b strings.Builder
	b.WriteString("globals:\n" + pgrShell(t, g, `runuser -u postgres -- pg_dumpall -h /run/postgresql --globals-only`+strip))
	b.WriteString("databases:\n" + pgSQL(t, g, "postgres", `SELECT datname, pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype, datacl, shobj_description(oid, 'pg_database'),
		(SELECT string_agg(array_to_string(setconfig, ','), ';') FROM pg_db_role_setting WHERE setdatabase = d.oid) FROM pg_database d ORDER BY datname;`))
	for _, db := range strings.Split(strings.TrimSpace(pgSQL(t, g, "postgres", "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname;")), "\n") {
		b.WriteString("database " + db + ":\n")
		b.WriteString(pgrShell(t, g, `runuser -u postgres -- pg_dump -h /run/postgresql -d "$1"`+strip+` | md5sum`, "dbname="+quoteConnValue(db)))
	}
	if strings.TrimSpace(pgSQL(t, g, "analytics", "SELECT to_regclass('public.big') IS NOT NULL;")) == "t" {
		b.WriteString("big: " + pgSQL(t, g, "analytics", "SELECT count(*), md5(string_agg(id || ':' || grp || ':' || payload || ':' || v, ',' ORDER BY id)) FROM big;"))
	}
	return b.String()
}

// samePG fails the test with the first differing line.
func samePG(t *testing.T, what, want, got string) {
	t.Helper()
	if want == got {
		return
	}
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			t.Fatalf("%s: line %d differs:\nsource:   %q\nrestored: %q", what, i+1, wl, gl)
		}
	}
}

func TestIntegrationPostgreSQL(t *testing.T) {
	st, gs := startPGRStack(t, guestv1.EnginePostgreSQL, 3, "pg")
	src, dst, other := gs[0], gs[1], gs[2]
	start := time.Now()
	pgSQL(t, src, "postgres", pgDataset)
	t.Logf("dataset loaded in %s", time.Since(start).Round(time.Millisecond))
	want := pgCanonical(t, src)

	// The backups, before anything else changes the source.
	base := st.backupOK(t, backupv1.CreateRequest{Instance: src.Instance}) // the default strategy: pg_basebackup
	if base.Strategy != "pg_basebackup" || base.Positions["wal_start"] == "" || base.Positions["wal_end"] == "" || base.Positions["timeline"] != "1" || base.Tools["pg_basebackup"] == "" {
		t.Errorf("pg_basebackup manifest: strategy %s, positions %v, tools %v", base.Strategy, base.Positions, base.Tools)
	}
	dump := st.backupOK(t, backupv1.CreateRequest{Instance: src.Instance, Strategy: "pg_dump"})
	if dump.Options["databases"] != "4" || len(dump.Artifacts) != 5 {
		t.Errorf("pg_dump manifest: options %v, %d artifacts", dump.Options, len(dump.Artifacts))
	}
	found := false
	for k, v := range dump.Options {
		found = found || strings.HasPrefix(k, "database.db-") && v == "ünïcødé db ✓"
	}
	if !found {
		t.Errorf("pg_dump manifest maps no artifact to the unicode database: %v", dump.Options)
	}
	// A write after the backups must be in neither restore.
	pgSQL(t, src, "shop", "INSERT INTO sales.customers (name) VALUES ('after the backup');")

	t.Run("pg_basebackup into a new guest", func(t *testing.T) {
		st.restoreOK(t, base.ID, dst.Instance, backupv1.ModeNew)
		samePG(t, "pg_basebackup restore", want, pgCanonical(t, dst))
		// The restored server accepts writes (it left recovery) and keeps the agent's configuration.
		pgSQL(t, dst, "shop", "INSERT INTO sales.audit (what) VALUES ('written after the restore');")
	})

	t.Run("pg_dump into a new guest", func(t *testing.T) {
		st.restoreOK(t, dump.ID, dst.Instance, backupv1.ModeNew)
		samePG(t, "pg_dump restore", want, pgCanonical(t, dst))
	})

	t.Run("pg_basebackup restore cancelled mid-download", func(t *testing.T) {
		// The target (the pg_dump restore above, plus a table of its own) is left as it was: the extract is
		// all or nothing, and PostgreSQL runs again on the guest's own data.
		pgSQL(t, dst, "postgres", "CREATE TABLE target_only (x int); INSERT INTO target_only VALUES (7);")
		before := pgCanonical(t, dst)
		j := st.submit(t, backupv1.RestoreGroup, backupv1.OpRestore, backupv1.RestoreRequest{Backup: base.ID, Instance: dst.Instance, BandwidthLimit: 4 << 20})
		st.waitExtracting(t, dst, j.ID, 2048)
		st.cancel(t, backupv1.RestoreGroup, j.ID)
		j = st.waitFinal(t, backupv1.RestoreGroup, j.ID, 30*time.Second)
		if j.State != jobs.StateCancelled || pgrJobCode(j) != errs.Cancelled {
			t.Fatalf("want cancelled with code cancelled; got %s %v", j.State, j.Error)
		}
		samePG(t, "target after the cancelled restore", before, pgCanonical(t, dst))
		noScratch(t, dst)
	})

	t.Run("pg_dump into an existing instance", func(t *testing.T) {
		// A database of the backup that exists and holds data: refused before anything is loaded.
		pgSQL(t, other, "postgres", "CREATE ROLE keeper LOGIN; CREATE DATABASE analytics OWNER keeper;")
		pgSQL(t, other, "analytics", "CREATE TABLE mine (x int); INSERT INTO mine VALUES (42);")
		before := pgCanonical(t, other)
		j := st.restoreJob(t, dump.ID, other.Instance, backupv1.ModeExisting)
		if j.State == jobs.StateSucceeded || pgrJobCode(j) != errs.Conflict || !strings.Contains(j.Error.Error(), `"analytics"`) {
			t.Fatalf("restore over a non-empty database: %s %v", j.State, j.Error)
		}
		t.Logf("refused as it should be: %v", j.Error)
		samePG(t, "target after the refused restore", before, pgCanonical(t, other))

		// Once it is gone, the backup loads beside what the instance has (the role keeper stays).
		pgSQL(t, other, "postgres", "DROP DATABASE analytics;")
		st.restoreOK(t, dump.ID, other.Instance, backupv1.ModeExisting)
		got := pgCanonical(t, other)
		if !strings.Contains(got, "CREATE ROLE keeper;") {
			t.Error("the instance's own role is gone after an existing-mode restore")
		}
		samePG(t, "existing-mode restore", withoutRole(want, "keeper"), withoutRole(got, "keeper"))
	})

	t.Run("refusals", func(t *testing.T) {
		// A physical backup replaces the data dir: new guests only.
		if j := st.restoreJob(t, base.ID, other.Instance, backupv1.ModeExisting); pgrJobCode(j) != errs.BadRequest {
			t.Errorf("pg_basebackup in existing mode: %s %v", j.State, j.Error)
		}
		// pg_basebackup to a stream carries one tablespace.
		pgrShell(t, src, "mkdir -p /var/lib/trove/ts1 && chown postgres /var/lib/trove/ts1")
		pgSQL(t, src, "postgres", "CREATE TABLESPACE ts1 LOCATION '/var/lib/trove/ts1';")
		j := st.run(t, backupv1.BackupGroup, backupv1.OpCreate, backupv1.CreateRequest{Instance: src.Instance})
		if j.State == jobs.StateSucceeded || pgrJobCode(j) != errs.Conflict || !strings.Contains(j.Error.Error(), "ts1") {
			t.Errorf("pg_basebackup with a tablespace: %s %v", j.State, j.Error)
		} else {
			t.Logf("refused as it should be: %v", j.Error)
		}
		pgSQL(t, src, "postgres", "DROP TABLESPACE ts1;")
		// A pg_dump backup onto a Redis guest.
		rg, err := st.kit.AddGuest(t.Context(), testkit.GuestOptions{Engine: guestv1.EngineRedis})
		if err != nil {
			t.Fatal(err)
		}
		if j := st.restoreJob(t, dump.ID, rg.Instance, backupv1.ModeNew); pgrJobCode(j) != errs.BadRequest || !strings.Contains(j.Error.Error(), "engine") {
			t.Errorf("pg_dump onto redis: %s %v", j.State, j.Error)
		}
	})
}

// withoutRole drops the lines of pg_dumpall's globals that name role.
func withoutRole(s, role string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, "ROLE "+role+";") && !strings.Contains(l, "ROLE "+role+" ") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
