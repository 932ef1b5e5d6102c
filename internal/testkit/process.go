package testkit

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BuildBinaries compiles cmd/api and cmd/worker into dir and returns their
// paths. Tests run the real binaries, not in-process stand-ins.
func BuildBinaries(dir string) (apiBin, workerBin string, err error) {
	root, err := moduleRoot()
	if err != nil {
		return "", "", err
	}
	for _, name := range []string{"api", "worker"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "./cmd/"+name)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", &buildError{name: name, out: string(out), err: err}
		}
	}
	return filepath.Join(dir, "api"), filepath.Join(dir, "worker"), nil
}

type buildError struct {
	name, out string
	err       error
}

func (e *buildError) Error() string { return "build " + e.name + ": " + e.err.Error() + "\n" + e.out }

func moduleRoot() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Proc is a running chatfleet process.
type Proc struct {
	t      testing.TB
	Name   string
	Addr   string // bound HTTP address, read from its "http server listening" log line
	cmd    *exec.Cmd
	exited chan struct{}
	mu     sync.Mutex
	lines  []string
}

// Env is a process environment: PATH and HOME from the test, nothing else
// inherited, so a developer's own CHATFLEET_ variables cannot leak in.
func Env(vars map[string]string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

// StartProc runs bin with args and env, waits until it serves HTTP, and stops
// it (SIGTERM, then SIGKILL) when the test ends. It fails the test if the
// process does not come up.
func StartProc(t testing.TB, name, bin string, env []string, args ...string) *Proc {
	t.Helper()
	p, err := Launch(t, name, bin, env, args...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Launch is StartProc returning its error, for use off the test goroutine.
func Launch(t testing.TB, name, bin string, env []string, args ...string) (*Proc, error) {
	p := &Proc{t: t, Name: name, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p.cmd.Stdout = io.Discard
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	addr := make(chan string, 1)
	go p.readLogs(stderr, addr)
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		stopStart := time.Now()
		defer func() {
			if d := time.Since(stopStart); d > time.Second {
				t.Logf("%s took %s to stop", name, d)
			}
		}()
		p.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			p.Signal(syscall.SIGKILL)
			<-p.exited
		}
		if t.Failed() {
			t.Logf("last log lines of %s:\n%s", name, p.tail(30))
		}
	})
	select {
	case p.Addr = <-addr:
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("%s exited at start:\n%s", name, p.tail(30))
	case <-time.After(20 * time.Second):
		return nil, fmt.Errorf("%s did not start serving within 20s:\n%s", name, p.tail(30))
	}
}

func (p *Proc) readLogs(r io.Reader, addr chan<- string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sent := false
	for sc.Scan() {
		line := sc.Text()
		p.mu.Lock()
		p.lines = append(p.lines, line)
		p.mu.Unlock()
		if !sent && strings.Contains(line, `"http server listening"`) {
			var m struct{ Addr string }
			if json.Unmarshal([]byte(line), &m) == nil && m.Addr != "" {
				addr <- m.Addr
				sent = true
			}
		}
	}
}

// URL is the process's base URL.
func (p *Proc) URL() string { return "http://" + p.Addr }

// Signal sends sig to the process (only to the process this Proc started).
func (p *Proc) Signal(sig syscall.Signal) {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// Wait waits for the process to exit and returns its exit code.
func (p *Proc) Wait(timeout time.Duration) (int, bool) {
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode(), true
	case <-time.After(timeout):
		return 0, false
	}
}

// Logs returns the log lines so far.
func (p *Proc) Logs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

func (p *Proc) tail(n int) string {
	l := p.Logs()
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// Stop ends the process now (SIGTERM, then SIGKILL after 15 s) and waits for it.
func (p *Proc) Stop() {
	p.Signal(syscall.SIGTERM)
	if _, ok := p.Wait(15 * time.Second); !ok {
		p.Signal(syscall.SIGKILL)
		<-p.exited
	}
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }
