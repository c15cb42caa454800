package sandboxuser

// Accounts named by the sandbox policy (process.run_as_user, process.run_as_group).
// Unlike an image's USER, which container runtimes accept as a bare numeric uid, a
// policy account must exist in the image's /etc/passwd or /etc/group: the policy
// promises an identity, and a typo must not turn into an anonymous uid.

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// Reasons an AccountError wraps (match them with errors.Is).
var (
	// ErrNoAccount: the account files have no such user or group.
	ErrNoAccount = errors.New("no such account")
	// ErrRootAccount: the name resolves to uid 0 or gid 0 (e.g. a second uid-0
	// account such as "toor"; the policy's own check refuses only "root" and "0").
	ErrRootAccount = errors.New("resolves to root")
)

// AccountError says which policy account could not be used and why.
type AccountError struct {
	Kind   string // "user" or "group": which of run_as_user / run_as_group is at fault
	Name   string // as asked for: a name or a numeric id
	File   string // the passwd or group file that was searched
	Reason error  // ErrNoAccount or ErrRootAccount
	// PrimaryRoot: the user exists but its primary group is gid 0.
	PrimaryRoot bool
}

func (e *AccountError) Error() string {
	what := "name"
	if isNumeric(e.Name) {
		what = "id"
	}
	switch {
	case e.PrimaryRoot:
		return fmt.Sprintf("sandboxuser: user %q in %s has the root group (gid 0) as its primary group", e.Name, e.File)
	case errors.Is(e.Reason, ErrRootAccount):
		id := "uid"
		if e.Kind == "group" {
			id = "gid"
		}
		return fmt.Sprintf("sandboxuser: %s %q in %s is %s 0 (root)", e.Kind, e.Name, e.File, id)
	}
	return fmt.Sprintf("sandboxuser: no %s with %s %q in %s", e.Kind, what, e.Name, e.File)
}

func (e *AccountError) Unwrap() error { return e.Reason }

// IsDefault reports whether a policy account value means "the default account":
// empty, or DefaultName (policy.Default fills run_as_user and run_as_group with it).
func IsDefault(s string) bool { return s == "" || s == DefaultName }

func isNumeric(s string) bool {
	_, err := strconv.ParseUint(s, 10, 32)
	return err == nil
}

// lookupUser finds an account by numeric uid (when s is all digits) or by name.
func lookupUser(pw []Entry, s string) *Entry {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		for i := range pw {
			if pw[i].UID == uint32(n) {
				return &pw[i]
			}
		}
		return nil
	}
	for i := range pw {
		if pw[i].Name == s {
			return &pw[i]
		}
	}
	return nil
}

// lookupGroup finds a group by numeric gid (when s is all digits) or by name.
func lookupGroup(gr []GroupEntry, s string) *GroupEntry {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		for i := range gr {
			if gr[i].GID == uint32(n) {
				return &gr[i]
			}
		}
		return nil
	}
	for i := range gr {
		if gr[i].Name == s {
			return &gr[i]
		}
	}
	return nil
}

// supplementary lists the gids of the groups whose member list names user, minus
// primary and minus gid 0 (the confinement helper refuses the root group).
func supplementary(gr []GroupEntry, user string, primary uint32) []uint32 {
	var out []uint32
	for _, g := range gr {
		if g.GID == primary || g.GID == 0 || slices.Contains(out, g.GID) {
			continue
		}
		if slices.Contains(g.Members, user) {
			out = append(out, g.GID)
		}
	}
	return out
}

// ResolveRunAs resolves the policy's process section: user (run_as_user: a name or
// a numeric uid) must be in passwd; group (run_as_group: a name or a numeric gid; ""
// = the account's primary group) must be in group and replaces the primary gid.
// Supplementary groups are the account's memberships in /etc/group. Failures are
// *AccountError: ErrNoAccount for a missing user or group, ErrRootAccount for one
// that resolves to uid 0 or gid 0 (also a primary group of 0 when group is "").
func (d DB) ResolveRunAs(user, group string) (*User, error) {
	pw, gr, err := d.read()
	if err != nil {
		return nil, err
	}
	e := lookupUser(pw, user)
	if e == nil {
		return nil, &AccountError{Kind: "user", Name: user, File: d.path("passwd"), Reason: ErrNoAccount}
	}
	if e.UID == 0 {
		return nil, &AccountError{Kind: "user", Name: user, File: d.path("passwd"), Reason: ErrRootAccount}
	}
	u := &User{Name: e.Name, UID: e.UID, GID: e.GID, Home: e.Home, Shell: e.Shell}
	if u.Home == "" {
		u.Home = "/"
	}
	if group != "" {
		g := lookupGroup(gr, group)
		if g == nil {
			return nil, &AccountError{Kind: "group", Name: group, File: d.path("group"), Reason: ErrNoAccount}
		}
		if g.GID == 0 {
			return nil, &AccountError{Kind: "group", Name: group, File: d.path("group"), Reason: ErrRootAccount}
		}
		u.GID = g.GID
	}
	if u.GID == 0 {
		return nil, &AccountError{Kind: "user", Name: user, File: d.path("passwd"), Reason: ErrRootAccount, PrimaryRoot: true}
	}
	u.Groups = supplementary(gr, u.Name, u.GID)
	return u, nil
}

// WithGroup returns a copy of u whose primary gid is group (a name or numeric gid
// that must be in the group file), with u's supplementary groups recomputed from
// the group file (by u.Name) without the new primary gid. For a default account
// and an explicit process.run_as_group.
func (d DB) WithGroup(u *User, group string) (*User, error) {
	_, gr, err := d.read()
	if err != nil {
		return nil, err
	}
	g := lookupGroup(gr, group)
	if g == nil {
		return nil, &AccountError{Kind: "group", Name: group, File: d.path("group"), Reason: ErrNoAccount}
	}
	if g.GID == 0 {
		return nil, &AccountError{Kind: "group", Name: group, File: d.path("group"), Reason: ErrRootAccount}
	}
	out := *u
	out.GID = g.GID
	out.Groups = supplementary(gr, u.Name, g.GID)
	return &out, nil
}
