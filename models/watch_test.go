package models

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// logBuf is a log sink the watcher's goroutine and the test share.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// applied records the lists Watch applies; refuse makes it refuse the next
// ones that many times.
type applied struct {
	mu     sync.Mutex
	sets   []*Set
	refuse int
}

func (a *applied) apply(s *Set) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refuse > 0 {
		a.refuse--
		return errors.New("the router could not take it")
	}
	a.sets = append(a.sets, s)
	return nil
}

func (a *applied) snapshot() []*Set {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*Set(nil), a.sets...)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func oneModel(name string) string {
	return "models:\n  - name: " + name + "\n    deployments: [{provider: sim}]\n"
}

func write(t *testing.T, path, content string) {
	t.Helper()
	// Written aside and renamed, as editors and Kubernetes do, so that a read
	// never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func startWatch(t *testing.T, path string, every time.Duration) (*applied, *logBuf) {
	t.Helper()
	var got applied
	logs := &logBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, path, getenv, every, zerolog.New(logs), got.apply)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Watch did not return when its context ended")
		}
	})
	return &got, logs
}

func TestWatchAppliesEditsAndKeepsTheListOnABrokenOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "models.yaml")
	write(t, path, oneModel("alpha"))
	got, logs := startWatch(t, path, 20*time.Millisecond)

	eventually(t, "the first list", func() bool { return len(got.snapshot()) == 1 })
	if n := got.snapshot()[0].Names(); len(n) != 1 || n[0] != "alpha" {
		t.Fatalf("first list %v", n)
	}

	write(t, path, oneModel("beta"))
	eventually(t, "the edit applied", func() bool { return len(got.snapshot()) == 2 })
	if n := got.snapshot()[1].Names(); len(n) != 1 || n[0] != "beta" {
		t.Fatalf("edited list %v", n)
	}
	if logs.count(`"message":"models file reloaded"`) != 1 || logs.count(`"models":["beta"]`) != 1 {
		t.Fatalf("reload not logged with the names: %s", logs.String())
	}

	// A broken edit: refused with the entry and field named, once, however
	// many times the file is read again.
	write(t, path, "models:\n  - name: beta\n    deployments: [{provider: sim, rpm: -3}]\n")
	refused := `models[0] \"beta\": deployments[0].rpm: must not be negative`
	eventually(t, "the refusal logged", func() bool { return logs.count(refused) == 1 })
	time.Sleep(200 * time.Millisecond) // ten more reads
	if logs.count(refused) != 1 || logs.count(`"level":"error"`) != 1 {
		t.Fatalf("the same failure was logged again: %s", logs.String())
	}
	if len(got.snapshot()) != 2 {
		t.Fatal("a broken file was applied")
	}

	// An unreadable file is refused the same way, and the list stays.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the missing file logged", func() bool { return logs.count("no such file") == 1 })

	// Fixed: applied and logged as a reload.
	write(t, path, oneModel("gamma"))
	eventually(t, "the fix applied", func() bool { return len(got.snapshot()) == 3 })
	if n := got.snapshot()[2].Names(); n[0] != "gamma" {
		t.Fatalf("fixed list %v", n)
	}
	// The same content again is no change.
	write(t, path, oneModel("gamma"))
	time.Sleep(100 * time.Millisecond)
	if len(got.snapshot()) != 3 {
		t.Fatal("an unchanged file was applied again")
	}
}

// A list the caller cannot put in force is logged and offered again at the
// next read, until it is taken.
func TestWatchOffersARefusedListAgain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "models.yaml")
	write(t, path, oneModel("alpha"))
	got, logs := startWatch(t, path, 20*time.Millisecond)
	eventually(t, "the first list", func() bool { return len(got.snapshot()) == 1 })
	got.mu.Lock()
	got.refuse = 2
	got.mu.Unlock()
	write(t, path, oneModel("beta"))
	eventually(t, "the edit applied once taken", func() bool { return len(got.snapshot()) == 2 })
	if n := logs.count("the router could not take it"); n != 1 {
		t.Fatalf("the refusal was logged %d times, want once", n)
	}
}

func TestWatchReloadsOnSIGHUP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "models.yaml")
	write(t, path, oneModel("alpha"))
	// No tick within the test: only the signal can make it read again.
	got, _ := startWatch(t, path, time.Hour)
	// The first list is applied after the handler is installed, so the
	// signal below cannot end the test process.
	eventually(t, "the first list", func() bool { return len(got.snapshot()) == 1 })

	write(t, path, oneModel("beta"))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the reload on SIGHUP", func() bool { return len(got.snapshot()) == 2 })
	if n := got.snapshot()[1].Names(); n[0] != "beta" {
		t.Fatalf("list after SIGHUP %v", n)
	}
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
