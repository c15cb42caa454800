package main

import (
	"regexp"
	"testing"
)

// validPoolName is what the vm driver accepts as a pool name.
var validPoolName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

func TestDefaultPoolName(t *testing.T) {
	for in, want := range map[string]string{
		"ubuntu:24.04":                        "ubuntu-24-04",
		"ghcr.io/acme/Agent_Box:v1":           "agent-box-v1",
		"oci-layout:/srv/images/base:latest":  "base-latest",
		"":                                    "default",
		"///":                                 "default",
		"docker-daemon:openshell-build/x:tag": "x-tag",
		"a-very-long-image-name-that-goes-on-and-on:1": "a-very-long-image-name-that-goes",
	} {
		if got := defaultPoolName(in); got != want {
			t.Errorf("defaultPoolName(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzDefaultPoolName: whatever the image reference, the name made from it is one
// the driver accepts.
func FuzzDefaultPoolName(f *testing.F) {
	for _, s := range []string{"ubuntu:24.04", "", "-", "ÄÖ/ü:--", "x/-a-/b--------------------------------c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, image string) {
		if n := defaultPoolName(image); !validPoolName.MatchString(n) {
			t.Fatalf("defaultPoolName(%q) = %q: not a valid pool name", image, n)
		}
	})
}
