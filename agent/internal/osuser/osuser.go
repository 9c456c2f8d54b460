// Package osuser resolves the few local users the agent runs tools as or gives files to: root and the
// engines' own users (mysql, postgres, redis). Anything else is refused, so a request cannot hand a file
// or a process to an arbitrary account.
package osuser

import (
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"troveng.dev/shared/errs"
)

// Names a request may use ("" means root).
var Names = []string{"root", "mysql", "postgres", "redis"}

// Identity is a resolved user.
type Identity struct {
	Name   string
	UID    int
	GID    int
	Groups []uint32 // supplementary groups
	Home   string
}

// IsRoot reports whether the identity is root.
func (id Identity) IsRoot() bool { return id.UID == 0 }

// Lookup resolves name ("" is root). Names outside Names are bad requests; a known name the host lacks
// (no postgres user on a MariaDB-only host) is NotFound.
func Lookup(name string) (Identity, error) {
	if name == "" {
		name = "root"
	}
	if !slices.Contains(Names, name) {
		return Identity{}, errs.BadRequestf("owner/user %q is not allowed; use one of %s (or empty for root)", name, strings.Join(Names, ", "))
	}
	u, err := user.Lookup(name)
	if err != nil {
		if name == "root" {
			return Identity{Name: "root", Home: "/root"}, nil
		}
		return Identity{}, errs.NotFoundf("there is no user %q on this guest", name)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return Identity{}, errs.Internalf("user %q has a non-numeric uid or gid", name)
	}
	id := Identity{Name: name, UID: uid, GID: gid, Home: u.HomeDir}
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				id.Groups = append(id.Groups, uint32(n))
			}
		}
	}
	if id.Home == "" {
		id.Home = "/"
	}
	return id, nil
}

// CanSwitch reports whether this process may run children as other users (it runs as root).
func CanSwitch() bool { return os.Geteuid() == 0 }

// Credential is the SysProcAttr credential that runs a child as id, or nil when no switch is needed or
// possible (the agent is not root: children then run as the agent's own user; documented).
func (id Identity) Credential() *syscall.Credential {
	if !CanSwitch() || (id.UID == os.Geteuid() && id.GID == os.Getegid()) {
		return nil
	}
	return &syscall.Credential{Uid: uint32(id.UID), Gid: uint32(id.GID), Groups: id.Groups}
}
