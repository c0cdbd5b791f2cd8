package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a throwaway PostgreSQL cluster for tests: Debian's postgresql package
// (installed by the Makefile when missing), in a temporary directory, on a loopback
// port. As root it runs as the package's postgres user, since PostgreSQL refuses root.
type Postgres struct {
	DSN  string
	bin  string
	dir  string
	port int
	cred *syscall.Credential
	// durable keeps PostgreSQL's fsync and full page writes on.
	durable bool
}

// PostgresBin finds the directory of initdb and pg_ctl.
func PostgresBin() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real), nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(matches) == 0 {
		return "", missingf("PostgreSQL not found (pg_ctl): run `make postgres` (make test installs it)")
	}
	return filepath.Dir(matches[len(matches)-1]), nil
}

// StartPostgres initialises and starts a cluster with a database named hookline,
// without fsync: tests need no durability across a machine crash.
func StartPostgres() (*Postgres, error) { return startPostgres(false) }

// StartDurablePostgres is StartPostgres with PostgreSQL's own defaults for durability
// (fsync, full page writes): what the benchmark measures against.
func StartDurablePostgres() (*Postgres, error) { return startPostgres(true) }

func startPostgres(durable bool) (*Postgres, error) {
	if err := checkWanted(); err != nil {
		return nil, err
	}
	bin, err := PostgresBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "hookline-pg-")
	if err != nil {
		return nil, err
	}
	p := &Postgres{bin: bin, dir: dir, durable: durable}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("PostgreSQL refuses to run as root and there is no postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p.port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	if out, err := p.run("initdb", "-D", p.data(), "-U", "hookline", "--auth=trust", "--no-sync", "-E", "UTF8"); err != nil {
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	if out, err := exec.Command(filepath.Join(bin, "createdb"), "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", "hookline", "hookline").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("createdb: %v: %s", err, out)
	}
	p.DSN = fmt.Sprintf("postgres://hookline@127.0.0.1:%d/hookline?sslmode=disable", p.port)
	return p, nil
}

func (p *Postgres) data() string { return filepath.Join(p.dir, "data") }

func (p *Postgres) run(tool string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(p.bin, tool), args...)
	cmd.Dir = p.dir
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	return cmd.CombinedOutput()
}

// Start starts the server (again) and waits until it accepts connections.
func (p *Postgres) Start() error {
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s", p.port, p.dir)
	if !p.durable {
		opts += " -c fsync=off -c full_page_writes=off"
	}
	if out, err := p.run("pg_ctl", "-D", p.data(), "-o", opts, "-l", filepath.Join(p.dir, "log"), "-w", "-t", "60", "start"); err != nil {
		return fmt.Errorf("pg_ctl start: %v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port)); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("PostgreSQL did not accept connections on port %d", p.port)
}

// Stop stops the server at once (the data stays, for Start).
func (p *Postgres) Stop() error {
	if out, err := p.run("pg_ctl", "-D", p.data(), "-m", "immediate", "-w", "stop"); err != nil {
		return fmt.Errorf("pg_ctl stop: %v: %s", err, out)
	}
	return nil
}

// Remove stops the server and deletes its files.
func (p *Postgres) Remove() error {
	return errors.Join(p.Stop(), os.RemoveAll(p.dir))
}

// Database creates a database of its own on the cluster (one per test keeps parallel
// tests apart) and returns its DSN.
func (p *Postgres) Database(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, p.DSN)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", err
	}
	return strings.Replace(p.DSN, "/hookline?", "/"+name+"?", 1), nil
}
