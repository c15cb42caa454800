package bootstrap

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadAndMaterialize(t *testing.T) {
	in := Config{Endpoint: "https://gw:17670", SandboxID: "sb", Token: "secret-token", CAPEM: []byte("PEM"),
		PolicyYAML: []byte("version: 1\n"), Main: MainProcessSpec{Version: 1, Command: []string{"sleep", "1"}}}
	data, _ := json.Marshal(in)
	c, err := Read(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "run")
	if err := Materialize(c, dir); err != nil {
		t.Fatal(err)
	}
	if c.Token != "" || c.TokenFile == "" || c.CAFile == "" || c.PolicyFile == "" {
		t.Fatalf("config after Materialize: %+v", c)
	}
	tok, err := c.LoadToken()
	if err != nil || tok != "secret-token" {
		t.Fatalf("LoadToken = %q, %v", tok, err)
	}
	for _, p := range []string{c.TokenFile, c.CAFile, c.PolicyFile} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, %v", p, st.Mode(), err)
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", st.Mode())
	}
	if _, err := Read(strings.NewReader(`{"endpoint":""}`)); err == nil {
		t.Fatal("Read accepted a config without endpoint")
	}
	if _, err := Read(strings.NewReader(`not json`)); err == nil {
		t.Fatal("Read accepted garbage")
	}
}

func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"endpoint":"https://x","sandbox_id":"a","token":"t"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Read(bytes.NewReader(data))
		if err == nil && (c.Endpoint == "" || c.SandboxID == "") {
			t.Fatalf("Read accepted an invalid config: %+v", c)
		}
	})
}
