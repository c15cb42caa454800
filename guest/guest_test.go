package guest

import (
	"testing"
	"time"
)

func TestDefaultsAndPID1(t *testing.T) {
	if IsPID1() {
		t.Fatal("a test process is not PID 1")
	}
	o := InitOptions{}.withDefaults()
	if o.ImageDisk != "/dev/vda" || o.DataDisk != "/dev/vdb" || o.ModulesDir != "/lib/modules" || o.DiskWait != 10*time.Second || o.PowerButtonGrace != 5*time.Second {
		t.Fatalf("defaults: %+v", o)
	}
	o = InitOptions{ImageDisk: "/dev/vdc"}.withDefaults()
	if o.ImageDisk != "/dev/vdc" {
		t.Fatalf("override lost: %+v", o)
	}
}
