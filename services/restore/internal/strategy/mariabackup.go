package strategy

// mariabackup restore: a physical chain (full + incrementals) into a new instance.
//
// Every element's mbstream is fetched by the agent from storage (frames checked and opened) into `mbstream
// -x` under a staging dir in the data root, the full backup is prepared and each incremental applied onto
// it, and only then is the engine reset (stopped, data dir emptied), the prepared files moved into the data
// dir, and the engine started on them. A bad artifact or a failed prepare therefore leaves the target as it
// was. docs/strategies-mariadb.md.

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"troveng.dev/shared/catalog"
	"troveng.dev/shared/contract/backupv1"
	"troveng.dev/shared/contract/guestv1"
	"troveng.dev/shared/engines/mariadb"
	"troveng.dev/shared/errs"
	"troveng.dev/shared/guestclient"
)

const (
	mariabackupName     = "mariabackup"
	mariabackupTool     = "mariadb-backup"
	mbstreamTool        = "mbstream"
	mariabackupArtifact = "data"
)

func init() { Register(mariabackupRestore{}) }

type mariabackupRestore struct{}

func (mariabackupRestore) Name() string { return mariabackupName }

func (mariabackupRestore) Engine() string { return guestv1.EngineMariaDB }

// StagesChain: every element is fetched into a staging dir and prepared there; the engine is reset only after.
func (mariabackupRestore) StagesChain() bool { return true }

// Check refuses, before any byte moves: another engine, mode existing, a broken or foreign chain, and a
// backup of another release series than the target runs (InnoDB's physical format is tied to it).
func (mariabackupRestore) Check(req Request) error {
	if err := mariadbCheckTarget(req, mariabackupTool, mbstreamTool); err != nil {
		return err
	}
	if req.Mode != "" && req.Mode != backupv1.ModeNew {
		return errs.BadRequestf("a mariabackup backup replaces the whole data dir, so it restores only into a new instance (mode new); to load into an existing instance, restore a mariadb-dump backup")
	}
	if len(req.Chain) == 0 {
		return errs.BadRequestf("the restore names no backup")
	}
	target, err := mariadbTargetVersion(req)
	if err != nil {
		return err
	}
	var prevTo string
	for i, m := range req.Chain {
		if m.Strategy != mariabackupName || m.Engine != guestv1.EngineMariaDB {
			return errs.BadRequestf("backup %s was made by %s for %s; this chain needs mariabackup backups of mariadb", m.ID, m.Strategy, m.Engine)
		}
		if (i == 0) != (m.Type == catalog.TypeFull) {
			return errs.BadRequestf("backup %s is %s at position %d of the chain: a chain is one full backup followed by incrementals", m.ID, m.Type, i)
		}
		if _, ok := m.Artifact(mariabackupArtifact); !ok {
			return errs.New(errs.Corrupt, "backup %s has no %q artifact", m.ID, mariabackupArtifact)
		}
		if i > 0 {
			if m.Parent != req.Chain[i-1].ID {
				return errs.BadRequestf("backup %s continues %s, not %s: the chain is out of order", m.ID, m.Parent, req.Chain[i-1].ID)
			}
			if from := m.Positions["lsn_from"]; from == "" || from != prevTo {
				return errs.New(errs.Corrupt, "backup %s starts at LSN %q but its parent %s ends at %q: the chain does not join up", m.ID, from, m.Parent, prevTo)
			}
		}
		prevTo = m.Positions["lsn_to"]
		if prevTo == "" {
			return errs.New(errs.Corrupt, "backup %s records no lsn_to position", m.ID)
		}
		bv, err := mariadb.ParseVersion(mariadbManifestVersion(m))
		if err != nil {
			return errs.BadRequestf("backup %s records no MariaDB server version, so its physical format cannot be checked against the target", m.ID)
		}
		if bv.CompareSeries(target) != 0 {
			return errs.BadRequestf("backup %s is a physical backup of MariaDB %s; the target runs %s. A physical backup restores only onto the same release series: restore into a %s guest, or use a mariadb-dump backup", m.ID, bv, target, bv.Series())
		}
		if tv, ok := m.Tools[mariabackupTool]; ok {
			if v, err := mariadb.ParseVersion(tv); err == nil && v.CompareSeries(target) != 0 {
				return errs.BadRequestf("backup %s was made by mariadb-backup %s; the target's MariaDB %s cannot prepare it", m.ID, v, target)
			}
		}
	}
	return nil
}

// mariabackupLayout names the staging dirs of one restore.
type mariabackupLayout struct {
	staging string // absolute; one dir per chain element below it, "0" the full backup
	n       int
}

func (l mariabackupLayout) dir(i int) string { return l.staging + "/" + strconv.Itoa(i) }

func mariabackupLayoutFor(req Request) mariabackupLayout {
	return mariabackupLayout{staging: mariadb.Abs(".trove-restore-" + req.Target().ID), n: len(req.Chain)}
}

// prepareArgs are the prepare steps in order: the full backup, then each incremental applied onto it.
func (l mariabackupLayout) prepareArgs() [][]string {
	out := [][]string{{"--no-defaults", "--prepare", "--target-dir=" + l.dir(0)}}
	for i := 1; i < l.n; i++ {
		out = append(out, []string{"--no-defaults", "--prepare", "--target-dir=" + l.dir(0), "--incremental-dir=" + l.dir(i)})
	}
	return out
}

// moveBackArgs move the prepared files into dataDir (a rename: the staging dir is on the same filesystem).
func (l mariabackupLayout) moveBackArgs(dataDir string) []string {
	return []string{"--no-defaults", "--move-back", "--target-dir=" + l.dir(0), "--datadir=" + dataDir}
}

// skeleton is a tar holding the empty staging dirs: extracting it is how the agent makes directories.
func (l mariabackupLayout) skeleton() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i < l.n; i++ {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strconv.Itoa(i) + "/", Mode: 0o750, ModTime: time.Unix(0, 0)}); err != nil {
			return nil, errs.Internalf("staging skeleton: %v", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, errs.Internalf("staging skeleton: %v", err)
	}
	return buf.Bytes(), nil
}

func (s mariabackupRestore) Restore(ctx context.Context, req Request) error {
	if err := s.Check(req); err != nil {
		return err
	}
	if err := mariabackupCheckTool(ctx, req); err != nil {
		return err
	}
	dataDir, err := mariadbDataDir(req)
	if err != nil {
		return err
	}
	l := mariabackupLayoutFor(req)
	stagingRel, err := mariadb.Rel(l.staging)
	if err != nil {
		return err
	}
	if err := mariadbRemove(ctx, req, stagingRel); err != nil { // a previous attempt's leftovers
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_ = mariadbRemove(cctx, req, stagingRel) // best effort; the restore's outcome is decided
	}()
	sk, err := l.skeleton()
	if err != nil {
		return err
	}
	r, err := req.Guest.Extract(ctx, guestv1.ExtractRequest{Path: stagingRel, Source: guestv1.SourceStream}, bytes.NewReader(sk))
	if err == nil {
		err = guestclient.Check(r)
	}
	if err != nil {
		return mariadbWrap(err, "make the staging dir %s on the guest", stagingRel)
	}

	// 1. Fetch every element (the agent checks each frame as it reads it).
	for i, m := range req.Chain {
		src, err := req.Source(m, mariabackupArtifact)
		if err != nil {
			return err
		}
		if _, err := Run(ctx, req, "fetch", FromStorage(src, mbstreamTool, "-x", "-C", l.dir(i))); err != nil {
			return mariadbWrap(err, "fetch backup %s into %s", m.ID, l.dir(i))
		}
		if err := mariabackupCheckFetched(ctx, req, l, i, m); err != nil {
			return err
		}
	}
	// 2. Prepare the full backup and apply each incremental.
	for i, args := range l.prepareArgs() {
		if _, err := Run(ctx, req, "prepare", guestv1.ExecRequest{Tool: mariabackupTool, Args: args}); err != nil {
			return mariadbWrap(err, "mariadb-backup --prepare of backup %s", req.Chain[i].ID)
		}
	}
	// 3. Only now touch the engine: stop it, empty its data dir, move the prepared files in, start it.
	// A cancel is honoured up to here. From the reset on the restore runs to its end whatever happens to
	// the job's context: stopped half-way, the target would hold neither its own data nor the backup's.
	// The phase is short (a stop, a rename of the prepared files on the same filesystem, a start), and a
	// cancel that arrives during it finds the restore done.
	if err := ctx.Err(); err != nil {
		return errs.Wrap(errs.CodeOfContext(ctx), context.Cause(ctx), "restore of %s cancelled before the target was touched", req.Chain[len(req.Chain)-1].ID)
	}
	commit := context.WithoutCancel(ctx)
	if _, err := req.Guest.EngineReset(commit, guestv1.EngineRequest{}); err != nil {
		return mariadbWrap(err, "reset the target's engine before moving the backup in")
	}
	if _, err := Run(commit, req, "move-back", guestv1.ExecRequest{Tool: mariabackupTool, Args: l.moveBackArgs(dataDir)}); err != nil {
		return mariadbWrap(err, "mariadb-backup --move-back into %s", dataDir)
	}
	return mariadbStart(commit, req, guestv1.EngineRequest{NoInit: true})
}

// mariabackupCheckTool compares the target's mariadb-backup release with the backups' before any byte moves.
func mariabackupCheckTool(ctx context.Context, req Request) error {
	r, err := req.Guest.Run(ctx, guestv1.ExecRequest{Tool: mariabackupTool, Args: []string{"--version"}, Stdout: guestv1.StdoutSpec{Mode: guestv1.StdoutCapture}}, nil)
	if err == nil {
		err = guestclient.Check(r)
	}
	if err != nil {
		return mariadbWrap(err, "mariadb-backup --version on the target")
	}
	have, err := mariadb.ParseToolVersion(string(r.Stdout) + "\n" + r.StderrTail) // it prints on stderr
	if err != nil {
		return err
	}
	for _, m := range req.Chain {
		bv, err := mariadb.ParseVersion(mariadbManifestVersion(m))
		if err == nil && bv.CompareSeries(have) != 0 {
			return errs.BadRequestf("backup %s is of MariaDB %s; the target's mariadb-backup is %s and cannot prepare it", m.ID, bv, have)
		}
	}
	return nil
}

// mariabackupCheckFetched reads the fetched element's checkpoints: the stream must hold the backup the
// manifest describes (type and LSN range), or the chain would be applied wrongly without an error.
func mariabackupCheckFetched(ctx context.Context, req Request, l mariabackupLayout, i int, m *catalog.Manifest) error {
	rel, err := mariadb.Rel(l.dir(i) + "/" + mariadb.CheckpointsFile)
	if err != nil {
		return err
	}
	f, err := req.Guest.ReadFile(ctx, rel)
	if err != nil {
		return mariadbWrap(err, "read the checkpoints of backup %s", m.ID)
	}
	cp, err := mariadb.ParseCheckpoints(f.Data)
	if err != nil {
		return errs.New(errs.Corrupt, "backup %s: %s", m.ID, errs.From(err).Message)
	}
	want := mariadb.BackupTypeFull
	if i > 0 {
		want = mariadb.BackupTypeIncremental
	}
	from, to := strconv.FormatUint(cp.FromLSN, 10), strconv.FormatUint(cp.ToLSN, 10)
	if cp.BackupType != want || (i > 0 && from != m.Positions["lsn_from"]) || to != m.Positions["lsn_to"] {
		return errs.New(errs.Corrupt, "backup %s holds a %s backup of LSN %s..%s, but its manifest records %s..%s", m.ID, cp.BackupType, from, to, m.Positions["lsn_from"], m.Positions["lsn_to"])
	}
	return nil
}

// mariadbCheckTarget refuses a target that is not a MariaDB guest or lacks the tools a strategy runs.
func mariadbCheckTarget(req Request, tools ...string) error {
	if req.Registration.Engine != guestv1.EngineMariaDB {
		return errs.BadRequestf("the target guest %s runs %q; these backups restore only onto mariadb (wrong engine)", req.Registration.Instance, req.Registration.Engine)
	}
	if len(req.Registration.Tools) > 0 {
		for _, t := range tools {
			if !slices.Contains(req.Registration.Tools, t) {
				return errs.Unavailablef("the target guest %s cannot run %s (its agent's tools: %v)", req.Registration.Instance, t, req.Registration.Tools)
			}
		}
	}
	return nil
}

// mariadbTargetVersion is the target's server version.
func mariadbTargetVersion(req Request) (mariadb.Version, error) {
	s := req.Registration.EngineVersion
	if s == "" {
		s = req.Registration.Status.Version
	}
	v, err := mariadb.ParseVersion(s)
	if err != nil {
		return mariadb.Version{}, errs.Unavailablef("the target guest %s reports no MariaDB version, so the backup cannot be checked against it; is its agent up to date?", req.Registration.Instance)
	}
	return v, nil
}

// mariadbManifestVersion is the server version a backup recorded.
func mariadbManifestVersion(m *catalog.Manifest) string {
	if m.EngineVersion != "" {
		return m.EngineVersion
	}
	return m.Options["server_version"]
}

// mariadbDataDir is the target's data dir (the agent's report, else the image's default), which must
// be under the data root.
func mariadbDataDir(req Request) (string, error) {
	d := req.Registration.Status.DataDir
	if d == "" {
		return mariadb.DataDir, nil
	}
	if _, err := mariadb.Rel(d); err != nil {
		return "", errs.Internalf("the target reports data dir %q, outside the data root %s", d, mariadb.DataRoot)
	}
	return d, nil
}

// mariadbRemove removes a tree under the data root; absent is fine.
func mariadbRemove(ctx context.Context, req Request, rel string) error {
	if _, err := req.Guest.Remove(ctx, guestv1.FileRemoveRequest{Path: rel, Recursive: true}); err != nil && !errs.Is(err, errs.NotFound) {
		return mariadbWrap(err, "remove %s on the guest", rel)
	}
	return nil
}

// mariadbStart starts the engine and requires it healthy.
func mariadbStart(ctx context.Context, req Request, er guestv1.EngineRequest) error {
	st, err := req.Guest.EngineStart(ctx, er)
	if err != nil {
		return mariadbWrap(err, "start MariaDB on the target")
	}
	if !st.Healthy {
		msg := st.Message
		if msg == "" {
			msg = "state " + st.State
		}
		return errs.Unavailablef("MariaDB on the target did not become healthy after the restore: %s", mariadb.Redact(msg))
	}
	return nil
}

// mariadbWrap puts what was being done in front of err's message, keeping its code and redacting any
// credentials a client may have quoted.
func mariadbWrap(err error, format string, args ...any) error {
	e := errs.From(mariadb.RedactError(err))
	return errs.New(e.Code, "%s: %s", fmt.Sprintf(format, args...), e.Message)
}
