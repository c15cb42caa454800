package sandboxuser

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

const runAsPasswd = `root:x:0:0:root:/root:/bin/bash
toor:x:0:0:second root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
agent:x:2345:2345:agent:/home/agent:/bin/bash
rootgrp:x:2400:0::/home/rootgrp:/bin/sh
nohome:x:2500:2500:::/bin/sh
1234:x:3000:3000:digits name:/srv:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
`

const runAsGroup = `root:x:0:agent
daemon:x:1:
agent:x:2345:
tools:x:3456:agent,other
other:x:4567:
dup:x:3456:agent
audio:x:29:nobody,agent
nogroup:x:65534:
`

func TestResolveRunAs(t *testing.T) {
	db := writeEtc(t, runAsPasswd, runAsGroup)
	tests := []struct {
		user, group string
		name        string
		uid, gid    uint32
		groups      []uint32
		home        string
		errKind     string // AccountError.Kind when an error is wanted
		errIs       error
	}{
		{user: "agent", name: "agent", uid: 2345, gid: 2345, groups: []uint32{3456, 29}, home: "/home/agent"},
		{user: "2345", name: "agent", uid: 2345, gid: 2345, groups: []uint32{3456, 29}, home: "/home/agent"},
		{user: "agent", group: "other", name: "agent", uid: 2345, gid: 4567, groups: []uint32{3456, 29}, home: "/home/agent"},
		// The new primary group leaves the supplementary list.
		{user: "agent", group: "tools", name: "agent", uid: 2345, gid: 3456, groups: []uint32{29}, home: "/home/agent"},
		{user: "agent", group: "4567", name: "agent", uid: 2345, gid: 4567, groups: []uint32{3456, 29}, home: "/home/agent"},
		{user: "nobody", name: "nobody", uid: 65534, gid: 65534, groups: []uint32{29}, home: "/nonexistent"},
		{user: "nohome", name: "nohome", uid: 2500, gid: 2500, home: "/"},
		// All digits means a uid, even when an account is named like that.
		{user: "1234", errKind: "user", errIs: ErrNoAccount},
		{user: "3000", name: "1234", uid: 3000, gid: 3000, home: "/srv"},
		{user: "ghost", errKind: "user", errIs: ErrNoAccount},
		{user: "4242", errKind: "user", errIs: ErrNoAccount},
		{user: "agent", group: "nosuch", errKind: "group", errIs: ErrNoAccount},
		{user: "agent", group: "9999", errKind: "group", errIs: ErrNoAccount},
		{user: "toor", errKind: "user", errIs: ErrRootAccount},
		{user: "rootgrp", errKind: "user", errIs: ErrRootAccount},
		{user: "rootgrp", group: "other", name: "rootgrp", uid: 2400, gid: 4567, home: "/home/rootgrp"},
		{user: "agent", group: "root", errKind: "group", errIs: ErrRootAccount},
	}
	for _, tc := range tests {
		t.Run(tc.user+":"+tc.group, func(t *testing.T) {
			u, err := db.ResolveRunAs(tc.user, tc.group)
			if tc.errKind != "" {
				var ae *AccountError
				if !errors.As(err, &ae) || ae.Kind != tc.errKind || !errors.Is(err, tc.errIs) {
					t.Fatalf("ResolveRunAs(%q, %q) = %+v, %v; want a %s error %v", tc.user, tc.group, u, err, tc.errKind, tc.errIs)
				}
				want := tc.user
				if tc.errKind == "group" {
					want = tc.group
				}
				if !strings.Contains(err.Error(), `"`+want+`"`) || !strings.Contains(err.Error(), db.Root) {
					t.Fatalf("error %q does not name %q and the file", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.Name != tc.name || u.UID != tc.uid || u.GID != tc.gid || u.Home != tc.home || !slices.Equal(u.Groups, tc.groups) {
				t.Fatalf("ResolveRunAs(%q, %q) = %+v", tc.user, tc.group, u)
			}
		})
	}
}

func TestResolveRunAsMissingFiles(t *testing.T) {
	db := DB{Root: t.TempDir()} // an image without /etc/passwd
	_, err := db.ResolveRunAs("agent", "")
	if !errors.Is(err, ErrNoAccount) || !strings.Contains(err.Error(), "passwd") {
		t.Fatalf("err = %v", err)
	}
}

func TestWithGroup(t *testing.T) {
	db := writeEtc(t, runAsPasswd, runAsGroup)
	base := &User{Name: "agent", UID: 2345, GID: 2345, Groups: []uint32{3456, 29}, Home: "/home/agent"}
	u, err := db.WithGroup(base, "tools")
	if err != nil {
		t.Fatal(err)
	}
	if u.GID != 3456 || !slices.Equal(u.Groups, []uint32{29}) || u.UID != 2345 || u.Home != "/home/agent" {
		t.Fatalf("WithGroup = %+v", u)
	}
	if base.GID != 2345 || len(base.Groups) != 2 {
		t.Fatalf("WithGroup changed its argument: %+v", base)
	}
	// An account without a passwd entry (a numeric image USER) has no memberships.
	u, err = db.WithGroup(&User{Name: "7777", UID: 7777, GID: 7777}, "4567")
	if err != nil || u.GID != 4567 || len(u.Groups) != 0 {
		t.Fatalf("WithGroup numeric = %+v, %v", u, err)
	}
	for group, want := range map[string]error{"nosuch": ErrNoAccount, "root": ErrRootAccount, "0": ErrRootAccount} {
		var ae *AccountError
		if _, err := db.WithGroup(base, group); !errors.Is(err, want) || !errors.As(err, &ae) || ae.Kind != "group" {
			t.Fatalf("WithGroup(%q) err = %v, want %v", group, err, want)
		}
	}
}

func TestIsDefault(t *testing.T) {
	for s, want := range map[string]bool{"": true, "sandbox": true, "agent": false, "1000": false, "Sandbox": false} {
		if got := IsDefault(s); got != want {
			t.Errorf("IsDefault(%q) = %v", s, got)
		}
	}
}

// FuzzResolveRunAs checks that whatever the policy names, a resolved account exists
// in the files and is never root.
func FuzzResolveRunAs(f *testing.F) {
	for _, s := range [][2]string{{"agent", ""}, {"2345", "tools"}, {"toor", ""}, {"ghost", "x"}, {"0", "0"}, {"", ""}, {"rootgrp", "other"}} {
		f.Add(s[0], s[1])
	}
	db := writeEtc(f, runAsPasswd, runAsGroup)
	pw := ParsePasswd([]byte(runAsPasswd))
	f.Fuzz(func(t *testing.T, user, group string) {
		u, err := db.ResolveRunAs(user, group)
		if err != nil {
			var ae *AccountError
			if !errors.As(err, &ae) || !(errors.Is(err, ErrNoAccount) || errors.Is(err, ErrRootAccount)) {
				t.Fatalf("ResolveRunAs(%q, %q): unexpected error %v", user, group, err)
			}
			return
		}
		if u.UID == 0 || u.GID == 0 || slices.Contains(u.Groups, 0) || slices.Contains(u.Groups, u.GID) {
			t.Fatalf("ResolveRunAs(%q, %q) = %+v: root or duplicate group", user, group, u)
		}
		if !slices.ContainsFunc(pw, func(e Entry) bool { return e.Name == u.Name && e.UID == u.UID }) {
			t.Fatalf("ResolveRunAs(%q, %q) = %+v: not an account of the file", user, group, u)
		}
	})
}
