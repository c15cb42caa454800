package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUsageErrors(t *testing.T) {
	dir, _ := os.MkdirTemp("", "osd-")
	defer os.RemoveAll(dir)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--state-dir", dir, "--gateway-endpoint", "127.0.0.1:1"}, "--bind-socket is required"},
		{[]string{"--allow-unauthenticated-tcp", "--state-dir", dir}, "go together"},
		{[]string{"--bind-socket", filepath.Join(dir, "s.sock"), "--state-dir", dir}, "gateway_endpoint"},
		{[]string{"--bind-socket", filepath.Join(dir, "s.sock"), "--state-dir", dir, "--gateway-endpoint", "127.0.0.1:1", "--accel", "hvf"}, "accel"},
		{[]string{"--bind-socket", filepath.Join(dir, "s.sock"), "--state-dir", dir, "--gateway-endpoint", "127.0.0.1:1", "--egress-allow-cidr", "nope"}, "egress_allow_cidrs"},
		{[]string{"--no-such-flag"}, "not defined"},
		{[]string{"runner"}, "--state-dir is required"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		if code == 0 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("run(%v) = %d, stderr %q; want failure mentioning %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

func TestDoctorJSON(t *testing.T) {
	var out, errb bytes.Buffer
	run([]string{"doctor", "--json", "--supervisor-binary", "/nonexistent"}, &out, &errb)
	if !strings.Contains(out.String(), `"accel"`) || !strings.Contains(out.String(), "/nonexistent") {
		t.Errorf("doctor --json output %q (stderr %q)", out.String(), errb.String())
	}
}

func TestResumeFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--resume-after-host-reboot=false"}, false},
		{[]string{"--resume-after-host-reboot"}, true},
	} {
		f, err := parse("openshell-driver-vm", tc.args, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if r := f.cfg.ResumeAfterHostReboot; r == nil || *r != tc.want {
			t.Errorf("parse(%v): ResumeAfterHostReboot = %v, want %v", tc.args, r, tc.want)
		}
	}
	var errb bytes.Buffer
	if _, err := parse("openshell-driver-vm", []string{"--resume-after-host-reboot=maybe"}, &errb); err == nil {
		t.Error("--resume-after-host-reboot=maybe accepted")
	}
}
