// Package sandboxuser decides which unprivileged user runs the sandbox's processes:
// the account the policy names (process.run_as_user / run_as_group, see ResolveRunAs),
// else the image's USER when one is given, else a "sandbox" user the supervisor adds
// to the image's /etc/passwd and /etc/group. The files are read and written directly
// (the binary is static, CGO_ENABLED=0, and the image may have no NSS configuration).
package sandboxuser

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// DefaultName is the user the supervisor creates when the image names none.
const DefaultName = "sandbox"

// User is a resolved account.
type User struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups
	Home   string
	Shell  string
}

// Entry is one /etc/passwd line.
type Entry struct {
	Name  string
	UID   uint32
	GID   uint32
	Home  string
	Shell string
}

// GroupEntry is one /etc/group line.
type GroupEntry struct {
	Name    string
	GID     uint32
	Members []string
}

// ParsePasswd parses /etc/passwd content, skipping malformed lines (images carry odd
// files; one bad line must not make the sandbox unusable).
func ParsePasswd(data []byte) []Entry {
	var out []Entry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < 7 || f[0] == "" {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, Entry{Name: f[0], UID: uint32(uid), GID: uint32(gid), Home: f[5], Shell: f[6]})
	}
	return out
}

// ParseGroup parses /etc/group content, skipping malformed lines.
func ParseGroup(data []byte) []GroupEntry {
	var out []GroupEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < 4 || f[0] == "" {
			continue
		}
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		var members []string
		for _, m := range strings.Split(f[3], ",") {
			if m = strings.TrimSpace(m); m != "" {
				members = append(members, m)
			}
		}
		out = append(out, GroupEntry{Name: f[0], GID: uint32(gid), Members: members})
	}
	return out
}

// Spec is a parsed image USER value: "name", "uid", "name:group", "uid:gid".
type Spec struct {
	User, Group string
}

// ParseSpec parses an image USER string.
func ParseSpec(s string) (Spec, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Spec{}, errors.New("sandboxuser: empty USER")
	}
	u, g, _ := strings.Cut(s, ":")
	if u == "" {
		return Spec{}, fmt.Errorf("sandboxuser: USER %q has no user part: use name, uid, name:group or uid:gid", s)
	}
	for _, part := range []string{u, g} {
		if strings.ContainsAny(part, ":\n\x00") {
			return Spec{}, fmt.Errorf("sandboxuser: USER %q is malformed: use name, uid, name:group or uid:gid", s)
		}
	}
	return Spec{User: u, Group: g}, nil
}

// IsRoot reports whether an image USER value means root.
func IsRoot(s string) bool {
	sp, err := ParseSpec(s)
	return err == nil && (sp.User == "root" || sp.User == "0")
}

// DB is the account files under a root directory ("/" in production).
type DB struct {
	Root string
}

func (d DB) path(name string) string { return filepath.Join(d.Root, "etc", name) }

func (d DB) read() ([]Entry, []GroupEntry, error) {
	pw, err := os.ReadFile(d.path("passwd"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("sandboxuser: read passwd: %w", err)
	}
	gr, err := os.ReadFile(d.path("group"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("sandboxuser: read group: %w", err)
	}
	return ParsePasswd(pw), ParseGroup(gr), nil
}

// Resolve turns an image USER value into a User using the account files. A numeric
// uid with no passwd entry is accepted (as the container runtimes do), with home "/".
func (d DB) Resolve(userSpec string) (*User, error) {
	sp, err := ParseSpec(userSpec)
	if err != nil {
		return nil, err
	}
	pw, gr, err := d.read()
	if err != nil {
		return nil, err
	}
	u := &User{Home: "/", Shell: ""}
	var found *Entry
	if n, err := strconv.ParseUint(sp.User, 10, 32); err == nil {
		u.UID, u.GID = uint32(n), uint32(n)
		u.Name = sp.User
		for i := range pw {
			if pw[i].UID == u.UID {
				found = &pw[i]
				break
			}
		}
	} else {
		for i := range pw {
			if pw[i].Name == sp.User {
				found = &pw[i]
				break
			}
		}
		if found == nil {
			return nil, fmt.Errorf("sandboxuser: image USER %q is not in %s: add the user to the image or use a numeric uid", sp.User, d.path("passwd"))
		}
	}
	if found != nil {
		u.Name, u.UID, u.GID, u.Home, u.Shell = found.Name, found.UID, found.GID, found.Home, found.Shell
	}
	if sp.Group != "" {
		if n, err := strconv.ParseUint(sp.Group, 10, 32); err == nil {
			u.GID = uint32(n)
		} else {
			ok := false
			for _, g := range gr {
				if g.Name == sp.Group {
					u.GID, ok = g.GID, true
					break
				}
			}
			if !ok {
				return nil, fmt.Errorf("sandboxuser: image USER group %q is not in %s", sp.Group, d.path("group"))
			}
		}
	}
	for _, g := range gr {
		if g.GID == u.GID {
			continue
		}
		for _, m := range g.Members {
			if m == u.Name {
				u.Groups = append(u.Groups, g.GID)
			}
		}
	}
	if u.Home == "" {
		u.Home = "/"
	}
	return u, nil
}

// EnsureDefault returns the "sandbox" user, appending it to passwd and group when it
// is absent. It picks the first uid and gid from 1000 up that no entry uses. home is
// the home directory recorded for a new user; shell is chosen by the caller.
func (d DB) EnsureDefault(home, shell string) (*User, error) {
	pw, gr, err := d.read()
	if err != nil {
		return nil, err
	}
	for _, e := range pw {
		if e.Name == DefaultName {
			return d.Resolve(DefaultName)
		}
	}
	usedU := map[uint32]bool{}
	for _, e := range pw {
		usedU[e.UID] = true
	}
	usedG := map[uint32]bool{}
	var gid uint32
	haveGroup := false
	for _, g := range gr {
		usedG[g.GID] = true
		if g.Name == DefaultName {
			gid, haveGroup = g.GID, true
		}
	}
	uid := uint32(1000)
	for usedU[uid] || (!haveGroup && usedG[uid]) {
		uid++
	}
	if !haveGroup {
		gid = uid
		if err := appendLine(d.path("group"), fmt.Sprintf("%s:x:%d:", DefaultName, gid)); err != nil {
			return nil, err
		}
	}
	if err := appendLine(d.path("passwd"), fmt.Sprintf("%s:x:%d:%d:openshell sandbox user:%s:%s", DefaultName, uid, gid, home, shell)); err != nil {
		return nil, err
	}
	return &User{Name: DefaultName, UID: uid, GID: gid, Home: home, Shell: shell}, nil
}

func appendLine(path, line string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("sandboxuser: create %s: %w", filepath.Dir(path), err)
	}
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("sandboxuser: read %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("sandboxuser: open %s (is the root filesystem read-only?): %w", path, err)
	}
	if len(old) > 0 && old[len(old)-1] != '\n' {
		line = "\n" + line
	}
	_, err = f.WriteString(line + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sandboxuser: append to %s: %w", path, err)
	}
	return nil
}

// Credential returns the credential to start a process as u, or nil when the
// supervisor is not root (it cannot switch users; tests run that way) or already is u.
func (u *User) Credential() *syscall.Credential {
	euid := os.Geteuid()
	if euid != 0 || uint32(euid) == u.UID && uint32(os.Getegid()) == u.GID {
		return nil
	}
	groups := append([]uint32(nil), u.Groups...)
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: groups}
}

// Env returns HOME, USER, LOGNAME and SHELL for u (shell defaults to /bin/sh).
func (u *User) Env() []string {
	shell := u.Shell
	if shell == "" {
		shell = "/bin/sh"
	}
	return []string{"HOME=" + u.Home, "USER=" + u.Name, "LOGNAME=" + u.Name, "SHELL=" + shell}
}

// Current returns the user the supervisor runs as (used when it is not root).
func Current(db DB) *User {
	uid := uint32(os.Getuid())
	pw, _, _ := db.read()
	for _, e := range pw {
		if e.UID == uid {
			return &User{Name: e.Name, UID: e.UID, GID: uint32(os.Getgid()), Home: e.Home, Shell: e.Shell}
		}
	}
	home, _ := os.UserHomeDir()
	if home == "" {
		home = "/"
	}
	return &User{Name: strconv.Itoa(int(uid)), UID: uid, GID: uint32(os.Getgid()), Home: home}
}
