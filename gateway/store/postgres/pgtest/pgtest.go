// Package pgtest gives tests a real PostgreSQL database: the server named by
// OPENSHELL_TEST_POSTGRES_DSN (see scripts/setup-postgres.sh) or, when that is unset
// and the PostgreSQL binaries are installed, a private throwaway server that Main
// starts in a temporary directory and stops by PID when the package's tests end.
// Every test gets its own empty schema, so tests in one database do not see each
// other.
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//	func TestX(t *testing.T) { dsn := pgtest.DSN(t); … }
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/openshell/openshell/internal/testenv"
)

// EnvDSN names the variable holding the DSN of an existing test server.
const EnvDSN = "OPENSHELL_TEST_POSTGRES_DSN"

var (
	baseDSN  string // DSN every test schema is created through
	startErr error  // why no database is available
	mainRan  bool
)

// Main runs the package's tests with a database available to DSN, and returns the exit
// code for os.Exit.
func Main(m *testing.M) int {
	mainRan = true
	if baseDSN = os.Getenv(EnvDSN); baseDSN != "" {
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	srv, err := Start(ctx)
	cancel()
	if err != nil {
		startErr = err
		return m.Run()
	}
	baseDSN = srv.DSN
	code := m.Run()
	if err := srv.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// DSN returns the DSN of a new, empty schema (dropped when the test ends). Without
// Main it uses the server named by OPENSHELL_TEST_POSTGRES_DSN. Without a database it
// skips the test locally and fails it under CI=true.
func DSN(tb testing.TB) string {
	tb.Helper()
	if !mainRan && baseDSN == "" {
		// A package that starts no private server (e.g. the end-to-end tests) can
		// still use the server scripts/setup-postgres.sh runs.
		baseDSN = os.Getenv(EnvDSN)
	}
	switch {
	case !mainRan && baseDSN == "":
		testenv.Require(tb, false, "no PostgreSQL: run scripts/setup-postgres.sh and export "+EnvDSN+" (or call pgtest.Main from TestMain)")
	case baseDSN == "":
		testenv.Require(tb, false, fmt.Sprintf("no PostgreSQL: %v; run scripts/setup-postgres.sh and export %s, or install the Debian package postgresql", startErr, EnvDSN))
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, baseDSN)
	if err != nil {
		tb.Fatalf("pgtest: connect to the test server: %v", err)
	}
	defer conn.Close(ctx)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		tb.Fatalf("pgtest: create schema: %v", err)
	}
	tb.Cleanup(func() {
		conn, err := pgx.Connect(ctx, baseDSN)
		if err != nil {
			tb.Errorf("pgtest: drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			tb.Errorf("pgtest: drop schema %s: %v", schema, err)
		}
	})
	return withSearchPath(baseDSN, schema)
}

// withSearchPath adds a search_path runtime parameter to a URL or key=value DSN.
func withSearchPath(dsn, schema string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		return dsn + sep + "search_path=" + url.QueryEscape(schema)
	}
	return dsn + " search_path=" + schema
}

// Server is a private PostgreSQL server listening only on a Unix socket in its own
// temporary directory.
type Server struct {
	DSN  string
	dir  string
	cmd  *exec.Cmd
	done chan error
}

// BinDir finds the newest /usr/lib/postgresql/*/bin holding initdb and postgres.
func BinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { // numeric: 15 before 9
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
				return d, nil
			}
		}
	}
	return "", errors.New("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
}

// Start initializes and starts a private server. PostgreSQL refuses to run as root, so
// as root it runs as the postgres user (the directory is chowned to it).
func Start(ctx context.Context) (_ *Server, retErr error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "openshell-pg-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir}
	defer func() {
		if retErr != nil {
			_ = s.Stop()
		}
	}()
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("pgtest: chown %s to postgres: %w", dir, err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgtest: initdb in %s: %w\n%s", data, err, out)
	}
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// Durability is pointless for test data; without it tests run much faster.
	s.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", dir, "-p", "5432",
		"-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=200")
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = sysProcAttr(cred)
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("pgtest: start postgres: %w", err)
	}
	s.done = make(chan error, 1)
	go func() { s.done <- s.cmd.Wait() }()
	s.DSN = fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable", dir)

	for {
		conn, err := pgx.Connect(ctx, s.DSN)
		if err == nil {
			_ = conn.Close(ctx)
			return s, nil
		}
		select {
		case werr := <-s.done:
			s.done <- werr
			log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			return nil, fmt.Errorf("pgtest: postgres exited during startup (%v):\n%s", werr, log)
		case <-ctx.Done():
			return nil, fmt.Errorf("pgtest: postgres not ready: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop shuts the server down by its PID (fast shutdown, then kill after 30 s) and
// removes its directory.
func (s *Server) Stop() error {
	var errs []error
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGINT) // PostgreSQL's "fast" shutdown
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
			errs = append(errs, fmt.Errorf("pgtest: postgres (pid %d) ignored SIGINT for 30s; killed", s.cmd.Process.Pid))
		}
		s.cmd = nil
	}
	if s.dir != "" {
		if err := os.RemoveAll(s.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root and user postgres does not exist (the Debian package postgresql creates it): %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}
