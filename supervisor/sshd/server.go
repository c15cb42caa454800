// Package sshd is the supervisor's built-in SSH server. It backs exec, connect, port
// forwarding and file transfer: the gateway reaches it only through relays that the
// supervisor itself opens (the sandbox exposes no inbound port), and the supervisor
// serves it on a Unix socket in a root-only directory.
package sshd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/sandboxuser"
)

// MainTarget is the main process as seen by the "openshell-main" attach.
type MainTarget interface {
	Attach() (replay []byte, live <-chan []byte, detach func())
	Write(p []byte) (int, error)
	Resize(cols, rows uint16) error
	Done() <-chan struct{}
	ExitCode() int
	TTY() bool
}

// MainName is the exec command or subsystem name that attaches to the main process.
const MainName = "openshell-main"

// Config configures the server.
type Config struct {
	User   *sandboxuser.User // who runs commands; required
	Env    []string          // base environment of every command (HOME, PATH, …)
	Dir    string            // working directory of commands
	Reaper *reaper.Reaper    // required
	// Main returns the main process, or nil while there is none.
	Main func() MainTarget
	// SFTPArgv re-executes an SFTP server (reading stdin, writing stdout) as the user
	// when the supervisor must switch users; nil serves SFTP in-process, which is only
	// right when the supervisor already runs as that user.
	SFTPArgv []string
	// TarArgv re-executes the transfer server (ServeTransfer) as the user, like
	// SFTPArgv; the writable list is appended as JSON. nil = in-process.
	TarArgv []string
	// Writable is the policy's read_write list that uploads must land in (the agent's
	// Landlock view); nil = no policy restriction.
	Writable []string
	// Shell is the login shell for "shell" requests and for running exec commands;
	// empty = the user's shell, else /bin/bash, else /bin/sh.
	Shell string
	// Start starts a prepared program (Path, Args, Env, Dir, stdio, SysProcAttr with
	// the user's Credential) and registers it with the reaper; the supervisor uses it
	// to confine sessions as it confines the main process. nil = Reaper.Start.
	Start func(cmd *exec.Cmd) (*reaper.Proc, error)
	// HostKey is the server's host key; nil = a fresh ed25519 key. The supervisor
	// makes one ahead while a pooled VM waits for its sandbox.
	HostKey ssh.Signer
}

// Validate names the first bad field.
func (c *Config) Validate() error {
	switch {
	case c.User == nil:
		return errors.New("sshd: Config.User is nil: resolve the sandbox user first")
	case c.Reaper == nil:
		return errors.New("sshd: Config.Reaper is nil: pass the supervisor's reaper")
	}
	return nil
}

// Server is the SSH server.
type Server struct {
	cfg     Config
	sshCfg  *ssh.ServerConfig
	hostKey ssh.Signer
	wg      sync.WaitGroup
}

// NewHostKey makes a fresh ed25519 host key.
func NewHostKey() (ssh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("sshd: generate host key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("sshd: host key: %w", err)
	}
	return signer, nil
}

// New creates a server with cfg.HostKey, or a fresh ed25519 host key.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Shell == "" {
		cfg.Shell = pickShell(cfg.User.Shell)
	}
	signer := cfg.HostKey
	if signer == nil {
		var err error
		if signer, err = NewHostKey(); err != nil {
			return nil, err
		}
	}
	// NoClientAuth: the server is reached only through relays the supervisor opens on
	// the gateway's request (served in-process on the relay stream, or through a Unix
	// socket in a root-only directory). The gateway authenticates and authorises every
	// caller (user credentials, SSH session tokens) before it asks for a relay, so
	// reaching the server is the authentication; a second credential here would only
	// duplicate that check.
	sc := &ssh.ServerConfig{NoClientAuth: true, ServerVersion: "SSH-2.0-openshell"}
	sc.AddHostKey(signer)
	return &Server{cfg: cfg, sshCfg: sc, hostKey: signer}, nil
}

func pickShell(userShell string) string {
	for _, s := range []string{userShell, "/bin/bash", "/bin/sh"} {
		if s == "" || filepath.Base(s) == "nologin" || filepath.Base(s) == "false" {
			continue
		}
		if st, err := os.Stat(s); err == nil && st.Mode().IsRegular() {
			return s
		}
	}
	return "/bin/sh"
}

// HostKey is the server's public host key.
func (s *Server) HostKey() ssh.PublicKey { return s.hostKey.PublicKey() }

// ListenUnix listens on path, creating its directory root-only (0700) and removing a
// stale socket left by an earlier supervisor.
func ListenUnix(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("sshd: create socket dir %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("sshd: chmod socket dir %s: %w", dir, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("sshd: remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("sshd: listen on %s: %w", path, err)
	}
	return ln, nil
}

// Serve accepts connections until ctx ends or ln fails, then closes ln and waits
// for the connections to finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer s.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("sshd: accept: %w", err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.ServeConn(ctx, c)
		}()
	}
}

// ServeConn serves one SSH connection until it ends or ctx ends.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	sc, chans, reqs, err := ssh.NewServerConn(c, s.sshCfg)
	if err != nil {
		slog.Debug("sshd: handshake failed", "err", err)
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	defer wg.Wait()
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				(&session{srv: s, ch: ch}).serve(ctx, creqs)
			}()
		case "direct-tcpip":
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.directTCPIP(ctx, nc)
			}()
		default:
			_ = nc.Reject(ssh.UnknownChannelType, "unsupported channel type "+nc.ChannelType())
		}
	}
}
