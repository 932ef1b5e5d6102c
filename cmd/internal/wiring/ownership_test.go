package wiring

import (
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// listed is what `go list -json` says of a package.
type listed struct {
	ImportPath string
	Dir        string
	Export     string
	GoFiles    []string
	Module     *struct{ Path string }
}

// owners may hold the store itself: the job lifecycle, the store, and the
// mains that build both.
func owners(path string) bool {
	const mod = "github.com/chatfleet/chatfleet/"
	return path == mod+"store" || path == mod+"jobs" || strings.HasPrefix(path, mod+"cmd/")
}

// Only jobs writes job state: every other package of the module (its
// non-test files) reads the store through store.Reader and writes through
// jobs.Manager. The packages are type-checked, so that a *store.Store
// reached any way (named, returned by a call, a method value) is found,
// not only one spelled out.
func TestOnlyJobsReachesTheStore(t *testing.T) {
	cmd := exec.Command("go", "list", "-e", "-export", "-deps", "-json=ImportPath,Dir,Export,GoFiles,Module", "./...")
	cmd.Dir = "../../.."
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	exports := map[string]string{}
	var mine []listed
	for dec := json.NewDecoder(strings.NewReader(string(out))); ; {
		var p listed
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		exports[p.ImportPath] = p.Export
		if p.Module != nil && p.Module.Path == "github.com/chatfleet/chatfleet" && !owners(p.ImportPath) {
			mine = append(mine, p)
		}
	}
	if len(mine) == 0 {
		t.Fatal("go list found none of the module's packages")
	}
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	imp := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		if exports[path] == "" {
			return nil, errors.New("no export data for " + path)
		}
		return os.Open(exports[path])
	})
	found := map[string]string{} // file:line -> the most telling finding there
	rank := func(what string) int { return map[bool]int{true: 2, false: 1}[strings.HasPrefix(what, "calls")] }
	for _, p := range mine {
		var files []*ast.File
		for _, name := range p.GoFiles {
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		}
		info := &types.Info{Uses: map[*ast.Ident]types.Object{}, Types: map[ast.Expr]types.TypeAndValue{}}
		if _, err := (&types.Config{Importer: imp}).Check(p.ImportPath, fset, files, info); err != nil {
			t.Fatalf("type-check %s: %v", p.ImportPath, err)
		}
		report := func(pos token.Pos, what string) {
			at := fset.Position(pos)
			file, err := filepath.Rel(root, at.Filename)
			if err != nil {
				file = at.Filename
			}
			line := fmt.Sprintf("%s:%d", file, at.Line)
			if cur, ok := found[line]; !ok || rank(what) > rank(cur) {
				found[line] = what
			}
		}
		for id, obj := range info.Uses {
			switch {
			case isStore(obj.Type()):
				report(id.Pos(), "uses "+id.Name+" of type "+obj.Type().String())
			case obj.Pkg() != nil && obj.Pkg().Path() == "github.com/chatfleet/chatfleet/store" && obj.Name() == "New":
				report(id.Pos(), "calls store.New")
			}
			if fn, ok := obj.(*types.Func); ok {
				if recv := fn.Signature().Recv(); recv != nil && isStore(recv.Type()) {
					report(id.Pos(), "calls (*store.Store)."+fn.Name())
				}
			}
		}
		for e, tv := range info.Types {
			if tv.IsValue() && isStore(tv.Type) {
				report(e.Pos(), "holds a "+tv.Type.String())
			}
		}
	}
	lines := slices.Sorted(maps.Keys(found))
	for _, line := range lines {
		t.Errorf("%s: %s", line, found[line])
	}
	if len(lines) > 0 {
		t.Log("only jobs, store and the mains hold a *store.Store: read through store.Reader, write through a jobs.Manager method")
	}
}

// isStore reports whether t is store.Store or a pointer to it.
func isStore(t types.Type) bool {
	if p, ok := t.(*types.Pointer); ok {
		t = p.Elem()
	}
	n, ok := t.(*types.Named)
	return ok && n.Obj().Pkg() != nil && n.Obj().Pkg().Path() == "github.com/chatfleet/chatfleet/store" && n.Obj().Name() == "Store"
}
