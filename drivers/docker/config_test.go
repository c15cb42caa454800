package docker

import (
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// The gateway decodes its [drivers.docker] table straight into Config.
func TestConfigFromTOML(t *testing.T) {
	var c Config
	md, err := toml.Decode(`
host = "unix:///run/docker.sock"
network = "sandboxes"
default_image = "busybox:latest"
default_cpu = "1"
default_memory = "1Gi"
pids_limit = 512
stop_timeout = "20s"
resync_interval = "1m"
labels = { "example.com/owner" = "ci" }
`, &c)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Fatalf("undecoded keys %v", u)
	}
	if c.Host != "unix:///run/docker.sock" || c.Network != "sandboxes" || c.DefaultMemory != "1Gi" || c.PidsLimit != 512 ||
		c.StopTimeout != 20*time.Second || c.ResyncInterval != time.Minute || c.Labels["example.com/owner"] != "ci" {
		t.Errorf("decoded %+v", c)
	}
}
