package strategy

// mariadb-dump restore: load a logical dump with the `mariadb` client, its stdin read by the agent from
// storage. Into a new instance (the engine is reset and started on a fresh data dir first) or into an
// existing one (the dump's databases and tables replace those of the same names; everything else stays).
// docs/strategies-mariadb.md.

import (
	"context"
	"strconv"
	"time"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/mariadb"
	"troveng.dev/shared/errs"
)

const (
	mariadbDumpName     = "mariadb-dump"
	mariadbClientTool   = "mariadb"
	mariadbDumpArtifact = "dump"
	// mariadbLoadPacket is the statement size the load allows (client and server): a row of a few MB is one
	// INSERT of twice its size in hex (--hex-blob).
	mariadbLoadPacket = 1 << 30
)

func init() { Register(mariadbDumpRestore{}) }

type mariadbDumpRestore struct{}

func (mariadbDumpRestore) Name() string   { return mariadbDumpName }
func (mariadbDumpRestore) Engine() string { return guestv1.EngineMariaDB }

// Check refuses another engine, a chain (a dump stands alone), and a dump of a newer release series than the
// target (its SQL may use what an older server does not know). An older dump onto a newer server is fine.
func (mariadbDumpRestore) Check(req Request) error {
	if err := mariadbCheckTarget(req, mariadbClientTool); err != nil {
		return err
	}
	switch req.Mode {
	case "", backupv1.ModeNew, backupv1.ModeExisting:
	default:
		return errs.BadRequestf("restore mode %q: a mariadb-dump backup restores in mode new or existing", req.Mode)
	}
	if len(req.Chain) != 1 {
		return errs.BadRequestf("a mariadb-dump backup is full and stands alone; the restore was given a chain of %d", len(req.Chain))
	}
	m := req.Chain[0]
	if m.Strategy != mariadbDumpName || m.Engine != guestv1.EngineMariaDB || m.Type != catalog.TypeFull {
		return errs.BadRequestf("backup %s is a %s %s backup of %s; this restores full mariadb-dump backups of mariadb", m.ID, m.Type, m.Strategy, m.Engine)
	}
	if _, ok := m.Artifact(mariadbDumpArtifact); !ok {
		return errs.New(errs.Corrupt, "backup %s has no %q artifact", m.ID, mariadbDumpArtifact)
	}
	target, err := mariadbTargetVersion(req)
	if err != nil {
		return err
	}
	bv, err := mariadb.ParseVersion(mariadbManifestVersion(m))
	if err != nil {
		return errs.BadRequestf("backup %s records no MariaDB server version, so it cannot be checked against the target", m.ID)
	}
	if bv.CompareSeries(target) > 0 {
		return errs.BadRequestf("backup %s is a dump of MariaDB %s; the target runs the older %s. Restore it onto MariaDB %s or newer", m.ID, bv, target, bv.Series())
	}
	return nil
}

// mariadbLoadArgs is the client's argument vector for the load. Errors stop it (no --force): a dump that
// does not load completely fails the restore.
func mariadbLoadArgs() []string {
	return append(mariadb.ClientArgs(),
		"--default-character-set=utf8mb4",
		"--max-allowed-packet="+strconv.Itoa(mariadbLoadPacket),
		"--batch",
	)
}

func (s mariadbDumpRestore) Restore(ctx context.Context, req Request) error {
	if err := s.Check(req); err != nil {
		return err
	}
	m := req.Chain[0]
	src, err := req.Source(m, mariadbDumpArtifact)
	if err != nil {
		return err
	}
	if req.Mode == "" || req.Mode == backupv1.ModeNew {
		// A new instance starts from a freshly initialised data dir, whatever was there.
		if _, err := req.Guest.EngineReset(ctx, guestv1.EngineRequest{}); err != nil {
			return mariadbWrap(err, "reset the target's engine")
		}
		if err := mariadbStart(ctx, req, guestv1.EngineRequest{}); err != nil {
			return err
		}
	} else if st, err := req.Guest.EngineStatus(ctx); err != nil {
		return mariadbWrap(err, "read the target's engine status")
	} else if st.State != guestv1.EngineRunning || !st.Healthy {
		return errs.Conflictf("the target's MariaDB is %s (healthy: %v); a load into an existing instance needs it running and healthy", st.State, st.Healthy)
	}

	// The server must accept statements as large as the client sends. max_allowed_packet is global only:
	// raise it for the load's connection, and put it back afterwards.
	old, err := Capture(ctx, req, mariadbClientTool, append(mariadb.ClientArgs(), "-N", "-B", "-e", "SELECT @@global.max_allowed_packet")...)
	if err != nil {
		return mariadbWrap(err, "read max_allowed_packet on the target")
	}
	oldRow, err := mariadb.ParseRow(old, 1)
	if err != nil {
		return err
	}
	oldPacket, err := strconv.ParseInt(oldRow[0], 10, 64)
	if err != nil {
		return errs.Internalf("the target reports max_allowed_packet %q", oldRow[0])
	}
	if oldPacket < mariadbLoadPacket {
		if err := mariadbSetPacket(ctx, req, mariadbLoadPacket); err != nil {
			return err
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = mariadbSetPacket(cctx, req, oldPacket) // best effort: it resets on the next restart anyway
		}()
	}

	if _, err := Run(ctx, req, "load", FromStorage(src, mariadbClientTool, mariadbLoadArgs()...)); err != nil {
		return mariadbWrap(err, "load the dump of backup %s", m.ID)
	}
	if st, err := req.Guest.EngineStatus(ctx); err != nil {
		return mariadbWrap(err, "read the target's engine status after the load")
	} else if !st.Healthy {
		return errs.Unavailablef("MariaDB on the target is not healthy after the load: %s", mariadb.Redact(st.Message))
	}
	return nil
}

func mariadbSetPacket(ctx context.Context, req Request, n int64) error {
	_, err := Capture(ctx, req, mariadbClientTool, append(mariadb.ClientArgs(), "-e", "SET GLOBAL max_allowed_packet="+strconv.FormatInt(n, 10))...)
	if err != nil {
		return mariadbWrap(err, "set max_allowed_packet on the target")
	}
	return nil
}
