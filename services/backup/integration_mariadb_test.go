//go:build integration

package backup_test

// MariaDB backups and restores through the services, on real guests: the storage service (fs), the backup
// and the restore service run in this process on the test kit's NATS; the guests are containers of the
// guest image with their agents. Each test loads a dataset with hard content into a source guest, backs it
// up through trove.backup.v1, restores it through trove.restore.v1 into another guest, and compares the
// two canonically: CHECKSUM TABLE of every table, and SHOW CREATE of every table, view, routine, trigger
// and event.
//
//	go tool task image:guest
//	cd services/backup && go test -tags integration -run IntegrationMariaDB -v .

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"troveng.dev/services/storage"
	"troveng.dev/shared/benchdata"
	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/jobs"
	"troveng.dev/shared/testkit"
)

func startMariaDBStack(t *testing.T, guests int) (*pgrStack, []*testkit.Guest) {
	t.Helper()
	k := testkit.Start(t, testkit.Options{Engine: guestv1.EngineMariaDB, Guests: guests, Prefix: "mdb"})
	ctx := context.Background()
	ss, err := storage.Start(ctx, k.Conn(), nil, storage.Config{Strategy: "fs", Options: map[string]string{"root": t.TempDir()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ss.Stop() })
	startBackupRestore(t, k.Conn(), false)
	return &pgrStack{kit: k}, k.Guests()
}

// sql runs statements on a guest as root (inside the container: the harness, not the system under test)
// and returns the batch-mode output.
var (
	autoIncRe = regexp.MustCompile(` AUTO_INCREMENT=[0-9]+`)
	createdRe = regexp.MustCompile(`(?m)\t[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?$`)
)

func sql(t *testing.T, g *testkit.Guest, stmts string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := g.Exec(ctx, "mariadb", "--default-character-set=utf8mb4", "-N", "-B", "-e", stmts)
	if err != nil {
		t.Fatalf("sql on %s: %v", g.Instance, err)
	}
	if r.Code != 0 {
		t.Fatalf("sql on %s: %s", g.Instance, r)
	}
	return string(r.Stdout)
}

// mdbDataset is the hard content: several schemas (one with a unicode name), unicode identifiers and data,
// binary blobs with every byte value, a multi-MB row, many tables, several engines, views, routines,
// triggers, events and an account with grants.
const mdbDataset = `
SET NAMES utf8mb4;
SET SESSION group_concat_max_len = 67108864;
CREATE DATABASE shop CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE ` + "`ünïcødé_δb`" + ` CHARACTER SET utf8mb4;
CREATE DATABASE analytics;
USE shop; -- seq_1_to_N (the Sequence engine) needs a current database
CREATE TABLE shop.customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(200) NOT NULL, note TEXT, created DATETIME(6) NOT NULL DEFAULT '2026-01-02 03:04:05.678901') ENGINE=InnoDB;
CREATE TABLE shop.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer INT NOT NULL, total DECIMAL(12,2) NOT NULL, status ENUM('new','paid','shipped') NOT NULL DEFAULT 'new', FOREIGN KEY (customer) REFERENCES shop.customers(id)) ENGINE=InnoDB;
CREATE TABLE shop.audit (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(100), at_id BIGINT) ENGINE=InnoDB;
CREATE TABLE shop.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
INSERT INTO shop.accounts SELECT seq, 1000 FROM seq_1_to_10;
INSERT INTO shop.customers (name, note) VALUES ('Zoë Ångström', 'naïve café — ok'), ('山田太郎', '日本語のメモ'), ('Дмитрий', 'emoji 😀🎉 and a tab	inside'), ('O''Brien', 'quote '' and backslash \\ and NUL \0 end'), ('', NULL);
INSERT INTO shop.orders (customer, total, status) SELECT 1 + seq % 5, seq * 1.25, ELT(1 + seq % 3, 'new', 'paid', 'shipped') FROM seq_1_to_2000;
CREATE TABLE ` + "`ünïcødé_δb`.`名前`" + ` (` + "`ключ`" + ` INT PRIMARY KEY, ` + "`データ`" + ` VARCHAR(100) CHARACTER SET utf8mb4, ` + "`ε`" + ` LONGTEXT) ENGINE=InnoDB;
INSERT INTO ` + "`ünïcødé_δb`.`名前`" + ` VALUES (1, 'こんにちは世界', 'Ω≈ç√∫'), (2, '🙂🙃', REPEAT('ü€😀', 400000)), (3, NULL, '');
CREATE TABLE analytics.blobs (id INT PRIMARY KEY, b LONGBLOB, v VARBINARY(255), bits BIT(12)) ENGINE=InnoDB;
INSERT INTO analytics.blobs SELECT seq, RANDOM_BYTES(1 + seq * 7), UNHEX(REPEAT(LPAD(HEX(seq % 256), 2, '0'), 10)), seq % 4096 FROM seq_1_to_200;
INSERT INTO analytics.blobs (id, b, v) SELECT 1000, (SELECT GROUP_CONCAT(RANDOM_BYTES(1024) SEPARATOR '') FROM seq_1_to_6144), (SELECT GROUP_CONCAT(CHAR(seq) SEPARATOR '') FROM seq_0_to_254);
CREATE TABLE analytics.aria_t (id INT PRIMARY KEY, s VARCHAR(50)) ENGINE=Aria;
INSERT INTO analytics.aria_t SELECT seq, CONCAT('row-', seq) FROM seq_1_to_300;
CREATE TABLE analytics.myisam_t (id INT PRIMARY KEY, d DOUBLE, j JSON) ENGINE=MyISAM;
INSERT INTO analytics.myisam_t SELECT seq, seq / 7, JSON_OBJECT('k', seq, 'ü', 'ß') FROM seq_1_to_300;
CREATE VIEW shop.v_paid AS SELECT c.name, SUM(o.total) AS total FROM shop.customers c JOIN shop.orders o ON o.customer = c.id WHERE o.status = 'paid' GROUP BY c.name;
CREATE VIEW ` + "`ünïcødé_δb`.`ビュー`" + ` AS SELECT ` + "`ключ`, `データ`" + ` FROM ` + "`ünïcødé_δb`.`名前`" + `;
CREATE PROCEDURE shop.pay(IN oid BIGINT) MODIFIES SQL DATA COMMENT 'marks an order paid — ✓' UPDATE shop.orders SET status = 'paid' WHERE id = oid;
CREATE FUNCTION shop.greet(n VARCHAR(50)) RETURNS VARCHAR(100) DETERMINISTIC RETURN CONCAT('Grüß dich, ', n, ' 👋');
CREATE TRIGGER shop.orders_ai AFTER INSERT ON shop.orders FOR EACH ROW INSERT INTO shop.audit (what, at_id) VALUES ('order ✓', NEW.id);
CREATE TRIGGER shop.customers_bi BEFORE INSERT ON shop.customers FOR EACH ROW SET NEW.name = TRIM(NEW.name);
CREATE EVENT shop.nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DO DELETE FROM shop.audit WHERE id < 0;
CREATE EVENT analytics.once ON SCHEDULE AT '2031-06-01 12:00:00' ON COMPLETION PRESERVE DISABLE COMMENT 'später' DO SELECT 1;
CREATE USER 'app'@'%' IDENTIFIED BY 'app-pw-not-a-secret';
GRANT SELECT, INSERT, UPDATE ON shop.* TO 'app'@'%';
GRANT EXECUTE ON PROCEDURE shop.pay TO 'app'@'%';
`

// mdbManyTables adds n tables to analytics, each with a few rows.
func mdbManyTables(from, n int) string {
	var b strings.Builder
	b.WriteString("USE analytics;\n")
	for i := from; i < from+n; i++ {
		fmt.Fprintf(&b, "CREATE TABLE analytics.t_%03d (id INT PRIMARY KEY, v VARCHAR(40), x DOUBLE) ENGINE=InnoDB;\n", i)
		fmt.Fprintf(&b, "INSERT INTO analytics.t_%03d SELECT seq, CONCAT('v', seq, '-', %d), seq * %d.5 FROM seq_1_to_%d;\n", i, i, i, 5+i%17)
	}
	return b.String()
}

// canonical is the comparable content of every non-system schema.
func canonical(t *testing.T, g *testkit.Guest) string {
	t.Helper()
	const sys = "('mysql','information_schema','performance_schema','sys')"
	var out strings.Builder
	out.WriteString("schemas:\n" + sql(t, g, "SELECT schema_name, default_character_set_name, default_collation_name FROM information_schema.schemata WHERE schema_name NOT IN "+sys+" ORDER BY 1"))
	tables := lines(sql(t, g, "SELECT CONCAT('`', REPLACE(table_schema, '`', '``'), '`.`', REPLACE(table_name, '`', '``'), '`'), table_type FROM information_schema.tables WHERE table_schema NOT IN "+sys+" ORDER BY table_schema, table_name"))
	var base, shows []string
	for _, l := range tables {
		name, typ, _ := strings.Cut(l, "\t")
		if typ == "BASE TABLE" {
			base = append(base, name)
			shows = append(shows, "SHOW CREATE TABLE "+name)
		} else {
			shows = append(shows, "SHOW CREATE VIEW "+name)
		}
	}
	if len(base) > 0 {
		out.WriteString("checksums:\n" + sql(t, g, "CHECKSUM TABLE "+strings.Join(base, ", ")+" EXTENDED"))
	}
	for _, q := range []struct{ list, show string }{
		{"SELECT CONCAT('`', routine_schema, '`.`', routine_name, '`'), routine_type FROM information_schema.routines WHERE routine_schema NOT IN " + sys + " ORDER BY 1, 2", ""},
		{"SELECT CONCAT('`', trigger_schema, '`.`', trigger_name, '`') FROM information_schema.triggers WHERE trigger_schema NOT IN " + sys + " ORDER BY 1", "TRIGGER"},
		{"SELECT CONCAT('`', event_schema, '`.`', event_name, '`') FROM information_schema.events WHERE event_schema NOT IN " + sys + " ORDER BY 1", "EVENT"},
	} {
		for _, l := range lines(sql(t, g, q.list)) {
			name, typ, _ := strings.Cut(l, "\t")
			if q.show != "" {
				typ = q.show
			}
			shows = append(shows, "SHOW CREATE "+typ+" "+name)
		}
	}
	if len(shows) > 0 {
		// Not content: the AUTO_INCREMENT a server shows can be ahead of MAX(id)+1 by a reserved batch
		// until it restarts, and a trigger's Created time is when it was (re)created.
		defs := sql(t, g, strings.Join(shows, ";\n"))
		defs = autoIncRe.ReplaceAllString(defs, "")
		defs = createdRe.ReplaceAllString(defs, "")
		out.WriteString("definitions:\n" + defs)
	}
	return out.String()
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// sameContent fails the test with the first differing line when two canonical dumps differ.
func sameContent(t *testing.T, what, want, got string) {
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
			t.Fatalf("%s: content differs at line %d:\n want %.300q\n  got %.300q", what, i+1, wl, gl)
		}
	}
}

// withoutAccounts drops shop.accounts' checksum line: transfers changed it after the backup's snapshot.
func withoutAccounts(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "shop.accounts\t") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// grants are the app account's grants (a dump carries accounts; a physical backup carries mysql.*).
func grants(t *testing.T, g *testkit.Guest) string {
	return sql(t, g, "SHOW GRANTS FOR 'app'@'%'")
}

// transfers moves money between accounts in transactions until stop is closed: the total never changes,
// so a backup taken meanwhile must restore to the same total.
func transfers(t *testing.T, g *testkit.Guest, stop <-chan struct{}) (wait func() int64) {
	var n atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			a, b := 1+i%10, 1+(i*7+3)%10
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			r, err := g.Exec(ctx, "mariadb", "-e", fmt.Sprintf("START TRANSACTION; UPDATE shop.accounts SET balance = balance - %d WHERE id = %d; UPDATE shop.accounts SET balance = balance + %d WHERE id = %d; COMMIT;", i%13, a, i%13, b))
			cancel()
			if err == nil && r.Code == 0 {
				n.Add(1)
			}
		}
	}()
	return func() int64 { wg.Wait(); return n.Load() }
}

func loadDataset(t *testing.T, g *testkit.Guest) {
	t.Helper()
	start := time.Now()
	sql(t, g, mdbDataset)
	sql(t, g, mdbManyTables(0, 60))
	t.Logf("dataset loaded into %s in %s", g.Instance, time.Since(start).Round(time.Millisecond))
}

// TestIntegrationMariaDBPhysicalChain: full, writes, incremental, writes, incremental; each point restored
// into a new guest equals the source at that point. The full backup runs while transfers write.
func TestIntegrationMariaDBPhysicalChain(t *testing.T) {
	st, gs := startMariaDBStack(t, 2)
	src, dst := gs[0], gs[1]
	loadDataset(t, src)
	wantTotal := sql(t, src, "SELECT SUM(balance) FROM shop.accounts")

	stop := make(chan struct{})
	wait := transfers(t, src, stop)
	full := st.backupOK(t, backupv1.CreateRequest{Instance: src.Instance, Strategy: "mariabackup", Options: map[string]string{"parallel": "2"}})
	close(stop)
	t.Logf("%d transfers committed around the full backup", wait())
	if full.Positions["lsn_to"] == "" || full.Tools["mariadb-backup"] == "" {
		t.Fatalf("full backup positions %v tools %v", full.Positions, full.Tools)
	}

	// Point 1: restore the full backup taken under writes; it is consistent (the total is unchanged).
	st.restoreOK(t, full.ID, dst.Instance, backupv1.ModeNew)
	if got := sql(t, dst, "SELECT SUM(balance) FROM shop.accounts"); got != wantTotal {
		t.Fatalf("a backup under writes restored to a total of %s, want %s", got, wantTotal)
	}
	// Quiet now: the source is the full backup plus the transfers after it.
	sameContent(t, "restore of the full backup", withoutAccounts(canonical(t, src)), withoutAccounts(canonical(t, dst)))
	at := []string{""}

	// Writes, then an incremental.
	sql(t, src, `USE shop;
		INSERT INTO shop.orders (customer, total) SELECT 1 + seq % 5, seq FROM seq_1_to_500;
		UPDATE shop.customers SET note = CONCAT(IFNULL(note, ''), ' — updated ✓') WHERE id <= 3;
		DELETE FROM shop.orders WHERE id % 10 = 0;
		UPDATE analytics.blobs SET b = RANDOM_BYTES(900) WHERE id <= 50;
		INSERT INTO analytics.aria_t SELECT seq, 'after-full' FROM seq_301_to_400;
		CREATE TABLE shop.added_after_full (id INT PRIMARY KEY, s VARCHAR(10)) ENGINE=InnoDB;
		INSERT INTO shop.added_after_full SELECT seq, 'x' FROM seq_1_to_50;
		CREATE OR REPLACE VIEW shop.v_new AS SELECT id FROM shop.orders WHERE status = 'new';`)
	at = append(at, canonical(t, src))
	inc1 := st.backupOK(t, backupv1.CreateRequest{Instance: src.Instance, Strategy: "mariabackup", Type: catalog.TypeIncremental})
	if inc1.Parent != full.ID || inc1.Positions["lsn_from"] != full.Positions["lsn_to"] {
		t.Fatalf("incremental 1: parent %s, lsn_from %s; want %s, %s", inc1.Parent, inc1.Positions["lsn_from"], full.ID, full.Positions["lsn_to"])
	}

	// More writes, then a second incremental.
	sql(t, src, `USE shop;
		UPDATE shop.orders SET status = 'shipped' WHERE status = 'paid';
		DROP TABLE analytics.t_005;
		ALTER TABLE analytics.t_006 ADD COLUMN extra VARCHAR(20) DEFAULT 'neu';
		INSERT INTO `+"`ünïcødé_δb`.`名前`"+` VALUES (4, 'после', REPEAT('ж', 100000));
		INSERT INTO analytics.myisam_t SELECT seq, seq, JSON_ARRAY(seq) FROM seq_301_to_350;`+mdbManyTables(60, 5))
	at = append(at, canonical(t, src))
	inc2 := st.backupOK(t, backupv1.CreateRequest{Instance: src.Instance, Strategy: "mariabackup", Type: catalog.TypeIncremental})
	if inc2.Parent != inc1.ID || inc2.Positions["lsn_from"] != inc1.Positions["lsn_to"] {
		t.Fatalf("incremental 2: parent %s, lsn_from %s; want %s, %s", inc2.Parent, inc2.Positions["lsn_from"], inc1.ID, inc1.Positions["lsn_to"])
	}

	// Each point, restored into the target (mode new replaces what the previous restore left).
	for i, id := range []string{inc2.ID, inc1.ID} {
		st.restoreOK(t, id, dst.Instance, backupv1.ModeNew)
		sameContent(t, "restore of "+id, at[2-i], canonical(t, dst))
	}
	// The full backup alone is the source just after it, minus the transfers made after it: compare
	// everything but the accounts.
	st.restoreOK(t, full.ID, dst.Instance, backupv1.ModeNew)
	if got := sql(t, dst, "SELECT SUM(balance) FROM shop.accounts"); got != wantTotal {
		t.Fatalf("full restore total %s, want %s", got, wantTotal)
	}
	if grants(t, dst) != grants(t, src) {
		t.Fatalf("grants differ after a physical restore:\n%s\nvs\n%s", grants(t, dst), grants(t, src))
	}
	// Nothing of the staging is left in the data root.
	if out := sql(t, dst, "SELECT 1"); out != "1\n" {
		t.Fatalf("target not answering: %q", out)
	}
	if r, _ := dst.Exec(context.Background(), "sh", "-c", "ls -a /var/lib/trove | grep -c '^.trove-' || true"); strings.TrimSpace(string(r.Stdout)) != "0" {
		t.Fatalf("staging dirs left on the target: %s", r)
	}
	if r, _ := src.Exec(context.Background(), "sh", "-c", "ls -a /var/lib/trove | grep -c '^.trove-' || true"); strings.TrimSpace(string(r.Stdout)) != "0" {
		t.Fatalf("backup scratch left on the source: %s", r)
	}
}

// TestIntegrationMariaDBDump: a logical backup (taken while transfers write) restored into a new guest and
// into an existing one that keeps its own database.
func TestIntegrationMariaDBDump(t *testing.T) {
	st, gs := startMariaDBStack(t, 3)
	src, fresh, existing := gs[0], gs[1], gs[2]
	loadDataset(t, src)
	wantTotal := sql(t, src, "SELECT SUM(balance) FROM shop.accounts")

	stop := make(chan struct{})
	wait := transfers(t, src, stop)
	d := st.backupOK(t, backupv1.CreateRequest{Instance: src.Instance, Strategy: "mariadb-dump"})
	close(stop)
	t.Logf("%d transfers committed around the dump", wait())
	if d.Tools["mariadb-dump"] == "" || d.Type != catalog.TypeFull {
		t.Fatalf("dump manifest: %+v", d)
	}

	st.restoreOK(t, d.ID, fresh.Instance, backupv1.ModeNew)
	if got := sql(t, fresh, "SELECT SUM(balance) FROM shop.accounts"); got != wantTotal {
		t.Fatalf("a dump under writes restored to a total of %s, want %s", got, wantTotal)
	}
	// Quiet now: everything matches the source but the accounts' checksum (transfers ran after the snapshot).
	want := canonical(t, src)
	sameContent(t, "dump restored into a new guest", withoutAccounts(want), withoutAccounts(canonical(t, fresh)))
	if g, w := grants(t, fresh), grants(t, src); g != w {
		t.Fatalf("grants after the dump restore:\n%s\nwant\n%s", g, w)
	}

	// Into an existing instance: its own database stays; the dump's schemas are laid over it.
	sql(t, existing, "CREATE DATABASE keepme; CREATE TABLE keepme.k (id INT PRIMARY KEY); INSERT INTO keepme.k VALUES (1),(2),(3);")
	st.restoreOK(t, d.ID, existing.Instance, backupv1.ModeExisting)
	if got := sql(t, existing, "SELECT COUNT(*) FROM keepme.k"); got != "3\n" {
		t.Fatalf("the existing instance lost its own data: %q", got)
	}
	// With the instance's own database set aside, the rest must equal the source.
	sql(t, existing, "DROP DATABASE keepme;")
	got := canonical(t, existing)
	sameContent(t, "dump restored into an existing guest", withoutAccounts(want), withoutAccounts(got))
}

// TestIntegrationMariaDBRefusals: bad paths that must fail with a clear coded error and leave the target
// untouched.
func TestIntegrationMariaDBRefusals(t *testing.T) {
	st, gs := startMariaDBStack(t, 2)
	src, dst := gs[0], gs[1]
	// 32 MiB of incompressible rows, so a restore slowed by its bandwidth limit is still downloading
	// when the cancel test acts.
	sql(t, src, "CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY); INSERT INTO d.t VALUES (1);"+
		" CREATE TABLE d.blobs (id INT PRIMARY KEY, b VARBINARY(1024)); INSERT INTO d.blobs SELECT seq, RANDOM_BYTES(1024) FROM d.seq_1_to_32768;")
	sql(t, dst, "CREATE DATABASE untouched; CREATE TABLE untouched.t (id INT PRIMARY KEY); INSERT INTO untouched.t VALUES (7);")
	before := canonical(t, dst)

	full := st.backupOK(t, backupv1.CreateRequest{Instance: src.Instance, Strategy: "mariabackup"})
	dump := st.backupOK(t, backupv1.CreateRequest{Instance: src.Instance, Strategy: "mariadb-dump"})

	expect := func(j jobs.Job, code errs.Code, says string) {
		t.Helper()
		if j.State != jobs.StateFailed || j.Error == nil || j.Error.Code != code || !strings.Contains(j.Error.Message, says) {
			t.Fatalf("want a failed job with %s saying %q; got %s %v", code, says, j.State, j.Error)
		}
		t.Logf("refused as expected: %s", j.Error.Message)
		sameContent(t, "target after a refusal", before, canonical(t, dst))
	}
	// A physical backup cannot be loaded into an existing instance.
	expect(st.restoreJob(t, full.ID, dst.Instance, backupv1.ModeExisting), errs.BadRequest, "mode new")
	// An incremental of a dump does not exist.
	j := st.run(t, backupv1.BackupGroup, backupv1.OpCreate, backupv1.CreateRequest{Instance: src.Instance, Strategy: "mariadb-dump", Type: catalog.TypeIncremental})
	if j.State != jobs.StateFailed || j.Error == nil || j.Error.Code != errs.BadRequest {
		t.Fatalf("incremental dump: %s %v", j.State, j.Error)
	}
	// An unknown strategy option.
	j = st.run(t, backupv1.BackupGroup, backupv1.OpCreate, backupv1.CreateRequest{Instance: src.Instance, Strategy: "mariabackup", Options: map[string]string{"paralel": "2"}})
	if j.State != jobs.StateFailed || j.Error == nil || j.Error.Code != errs.BadRequest || !strings.Contains(j.Error.Message, "parallel") {
		t.Fatalf("unknown option: %s %v", j.State, j.Error)
	}
	// A mariabackup restore cancelled while the chain streams into its staging dir: cancelled, the staging
	// dir gone, the target's MariaDB never touched (it keeps running on its own data).
	t.Run("mariabackup restore cancelled mid-download", func(t *testing.T) {
		j := st.submit(t, backupv1.RestoreGroup, backupv1.OpRestore, backupv1.RestoreRequest{Backup: full.ID, Instance: dst.Instance, BandwidthLimit: 4 << 20})
		st.waitStaging(t, dst, j.ID, "/var/lib/trove/.trove-restore-*", 1024)
		st.cancel(t, backupv1.RestoreGroup, j.ID)
		j = st.waitFinal(t, backupv1.RestoreGroup, j.ID, 60*time.Second)
		if j.State != jobs.StateCancelled || pgrJobCode(j) != errs.Cancelled {
			t.Fatalf("want cancelled with code cancelled; got %s %v", j.State, j.Error)
		}
		if out := pgrShell(t, dst, `ls -A /var/lib/trove`); strings.Contains(out, ".trove-restore-") {
			t.Errorf("staging left on the target: %s", out)
		}
		sameContent(t, "target after a cancelled restore", before, canonical(t, dst))
	})
	// A dump restored into a new guest cannot be of a newer series: covered by the unit tests (a guest of
	// another MariaDB release is not at hand); the dump itself restores fine here.
	st.restoreOK(t, dump.ID, dst.Instance, backupv1.ModeNew)
	if got := sql(t, dst, "SELECT id FROM d.t"); got != "1\n" {
		t.Fatalf("dump restore: %q", got)
	}

	// The benchmark generator (bench:gen) through the agent, small: one round of two tables.
	t.Run("benchmark data generator", func(t *testing.T) {
		reg, err := src.Registration(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		admin, bench, err := benchdata.AgentQueries(src.Client, reg)
		if err != nil {
			t.Fatal(err)
		}
		size, err := benchdata.MariaDB.Grow(t.Context(), admin, bench, 1, 20000, 2, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := sql(t, src, "SELECT COUNT(*) FROM bench.t_001; SELECT COUNT(*) FROM bench.t_002; SELECT COUNT(DISTINCT token) FROM bench.t_002"); got != "20000\n20000\n20000\n" {
			t.Fatalf("generated tables hold %q", got)
		}
		t.Logf("generated %d bytes in 2 tables", size)
	})
}
