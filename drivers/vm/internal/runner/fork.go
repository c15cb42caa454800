package runner

// A copy started from a snapshot ("fork"): the sandbox directory holds a suspend
// record with ForkOf set, made by the driver from the snapshot's files. The runner
// restores the guest as for a resume, but the guest still holds the snapshotted
// sandbox's identity (its id, token and instance secret). So this runner mints a new
// instance secret (the gateway and egress ports admit only it: the old session cannot
// come back through here) and serves this sandbox's bootstrap document once more on
// the bootstrap port, admitting only a connection that opens with the OLD instance
// secret: the restored supervisor is the one program in the guest that holds it (the
// agent never sees it). The document (bootstrap.IdentityDoc) also carries the host's
// time and fresh entropy: the restored guest's clock stood still since the snapshot,
// and its kernel's random state is the snapshotted one, shared with every other copy.

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/internal/atomicfile"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// ForkEntropyBytes is how much host randomness a copy's document carries.
const ForkEntropyBytes = 64

// forking reports whether this run restores a copy made from a snapshot.
func (sp *suspender) forking() bool { return sp.fork != nil }

// serveFork serves doc (this sandbox's bootstrap.Config with its new instance
// secret) once to a connection that opens with the guest's old instance secret.
func (sp *suspender) serveFork(l net.Listener, doc []byte, box *statusBox, log *slog.Logger) {
	defer clear(doc)
	old, err := wire.ParseSecret(sp.fork.InstanceSecret)
	if err != nil {
		log.Error("fork: the snapshot's instance secret", "err", err)
		_ = l.Close()
		return
	}
	var cfg bootstrap.Config
	if err := json.Unmarshal(doc, &cfg); err != nil {
		log.Error("fork: bootstrap document", "err", err)
		_ = l.Close()
		return
	}
	if serveHostDoc(l, old, box, log, "fork", func() bootstrap.IdentityDoc {
		d := bootstrap.IdentityDoc{Config: cfg, Reidentify: bootstrap.Reidentify{HostTimeUnixNano: time.Now().UnixNano(), Entropy: make([]byte, ForkEntropyBytes)}}
		_, _ = rand.Read(d.Reidentify.Entropy)
		return d
	}) {
		log.Info("the restored copy's supervisor took this sandbox's identity; the bootstrap port is closed", "copy_of", sp.fork.ForkOf)
	}
}

// serveHostClock answers a resumed guest's question for a new identity with none,
// only the host's time: its clock stood still while it was suspended. It is served
// once, to a connection that opens with the guest's instance secret.
func serveHostClock(l net.Listener, secret wire.Secret, box *statusBox, log *slog.Logger) {
	if serveHostDoc(l, secret, box, log, "resume", func() bootstrap.IdentityDoc {
		return bootstrap.IdentityDoc{Reidentify: bootstrap.Reidentify{HostTimeUnixNano: time.Now().UnixNano()}}
	}) {
		log.Info("the resumed guest took the host's time; the bootstrap port is closed")
	}
}

// serveHostDoc serves a document made by doc (at each attempt: it carries the host's
// time) on the bootstrap port to a connection that opens with secret, until the guest
// acknowledges one; then the port is closed. It reports whether one was taken (not
// when the listener closed first). what names the case in logs.
func serveHostDoc(l net.Listener, secret wire.Secret, box *statusBox, log *slog.Logger, what string, doc func() bootstrap.IdentityDoc) bool {
	g := &gate{port: "bootstrap", limit: 2, secret: secret, box: box, log: log, refused: func(*Status) {}}
	gl := g.listen(l)
	defer gl.Close()
	for {
		c, err := gl.Accept()
		if err != nil {
			return false
		}
		d := doc()
		b, err := json.Marshal(d)
		clear(d.Reidentify.Entropy)
		if err != nil {
			c.Close()
			log.Error(what+": encode the document", "err", err)
			return false
		}
		_, err = sendBootstrap(c, b)
		clear(b)
		if err != nil {
			c.Close()
			box.update(func(s *Status) { s.BootstrapUnacked++ })
			log.Warn(what+": the restored guest did not take the document; serving it again", "err", err)
			continue
		}
		gl.Close()
		c.SetWriteDeadline(time.Now().Add(bootstrapTimeout))
		if _, err := io.WriteString(c, wire.BootstrapDone); err != nil {
			log.Warn(what+": confirm the closed port to the guest", "err", err)
		}
		c.Close()
		box.update(func(s *Status) { s.Bootstrap++ })
		return true
	}
}

// ForkRecord makes the suspend record of a copy: the snapshot's machine (its
// kernel and initramfs at paths of the copy) and the instance secret its guest holds.
func ForkRecord(snap *SnapshotRecord, stateFile, kernel, initrd, sourceID string) *SuspendRecord {
	m := snap.Machine
	m.Kernel, m.Initrd, m.RestoreFrom = kernel, initrd, ""
	return &SuspendRecord{StateFile: stateFile, Bytes: snap.StateBytes, Machine: m, InstanceSecret: snap.InstanceSecret,
		SavedAt: snap.SavedAt, ForkOf: sourceID}
}

// WriteSuspend writes dir's suspend record (a copy's, made by the driver).
func WriteSuspend(dir string, r *SuspendRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, SuspendFile), b, 0o600); err != nil {
		return fmt.Errorf("write the copy's suspend record: %w", err)
	}
	return nil
}
