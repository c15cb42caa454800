package channel

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func fakeSys(t *testing.T) (ports, devs string) {
	t.Helper()
	root := t.TempDir()
	oldP, oldD, oldDev := virtioPortsDir, virtioDevsDir, devDir
	virtioPortsDir = filepath.Join(root, "virtio-ports")
	virtioDevsDir = filepath.Join(root, "virtio-devices")
	devDir = filepath.Join(root, "dev")
	t.Cleanup(func() { virtioPortsDir, virtioDevsDir, devDir = oldP, oldD, oldDev })
	for _, d := range []string{virtioPortsDir, virtioDevsDir, devDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return virtioPortsDir, virtioDevsDir
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestDetect(t *testing.T) {
	ports, devs := fakeSys(t)
	if _, err := Detect(); !errors.Is(err, ErrNoChannel) {
		t.Fatalf("empty sysfs: %v", err)
	}
	write(t, filepath.Join(devs, "virtio0", "device"), "0x0002\n") // a block device
	write(t, filepath.Join(ports, "vport0p1", "name"), "other\n")
	if _, err := Detect(); !errors.Is(err, ErrNoChannel) {
		t.Fatalf("no vsock, no openshell port: %v", err)
	}
	write(t, filepath.Join(ports, "vport1p2", "name"), "openshell.0\n")
	if tr, err := Detect(); err != nil || tr != TransportSerial {
		t.Fatalf("serial port: %q %v", tr, err)
	}
	// A vsock device wins when both exist.
	write(t, filepath.Join(devs, "virtio1", "device"), "0x0013\n")
	if tr, err := Detect(); err != nil || tr != TransportVsock {
		t.Fatalf("vsock device: %q %v", tr, err)
	}
	p, err := findSerialPort()
	if err != nil || p != filepath.Join(devDir, "vport1p2") {
		t.Fatalf("findSerialPort = %q, %v", p, err)
	}
}
