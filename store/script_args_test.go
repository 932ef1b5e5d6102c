package store

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// trailingBlobs are the scripts that take, after their arguments in
// ARGV[1], a list of opaque blobs that JSON would only copy (a record's
// field/value pairs, event bodies, history entries). They read it in a loop
// from ARGV[2] on, and say so at their top ("ARGV[2..]").
var trailingBlobs = map[string]bool{
	"createJob":         true,
	"createAndSchedule": true,
	"finish":            true,
	"syncEvents":        true,
}

// TestScriptsTakeNamedArguments holds every script of the package to named
// arguments: ARGV[1] is a JSON object, decoded once at the script's top,
// and read by name. No script reads a positional ARGV[n] beyond it, and no
// shared fragment reads ARGV at all (its helpers take named values). Only
// the scripts in trailingBlobs read more of ARGV, in a loop.
func TestScriptsTakeNamedArguments(t *testing.T) {
	positional := regexp.MustCompile(`ARGV\s*\[\s*([02-9]|[0-9]{2,})\s*\]`) // a literal index but 1
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	scripts := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || (gd.Tok != token.VAR && gd.Tok != token.CONST) {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				if len(vs.Names) != 1 || len(vs.Values) != 1 {
					continue
				}
				id := vs.Names[0].Name
				src := literals(vs.Values[0])
				isScript := isNewScript(vs.Values[0])
				if isScript {
					scripts++
				}
				if !strings.Contains(src, "ARGV") {
					continue
				}
				where := fset.Position(vs.Pos()).String() + " " + id
				if !isScript {
					t.Errorf("%s: a shared fragment reads ARGV; its helpers should take named values", where)
					continue
				}
				if n := strings.Count(src, "ARGV[1]"); n != 1 || strings.Count(src, "cjson.decode(ARGV[1])") != 1 {
					t.Errorf("%s: ARGV[1] should be read once, by cjson.decode(ARGV[1]) (read %d times)", where, n)
				}
				if m := positional.FindAllString(src, -1); len(m) > 0 {
					t.Errorf("%s: reads ARGV by position: %q", where, m)
				}
				if !trailingBlobs[id] && strings.Count(src, "ARGV") != strings.Count(src, "ARGV[1]") {
					t.Errorf("%s: reads ARGV past ARGV[1] but takes no trailing blobs (trailingBlobs)", where)
				}
				if trailingBlobs[id] && !strings.Contains(docOf(gd, vs), "ARGV[2..]") {
					t.Errorf("%s: takes trailing blobs but its comment does not say what ARGV[2..] holds", where)
				}
			}
		}
	}
	if scripts < 20 {
		t.Fatalf("found %d scripts: the scan missed them", scripts)
	}
}

// literals joins the string literals of an expression: a script's text and
// the fragments written inline.
func literals(e ast.Expr) string {
	var b strings.Builder
	ast.Inspect(e, func(n ast.Node) bool {
		if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
			if s, err := strconv.Unquote(lit.Value); err == nil {
				b.WriteString(s)
				b.WriteByte('\n')
			}
		}
		return true
	})
	return b.String()
}

// isNewScript reports whether e is a redis.NewScript(…) call.
func isNewScript(e ast.Expr) bool {
	call, ok := e.(*ast.CallExpr)
	if !ok {
		return false
	}
	sel, ok := call.Fun.(*ast.SelectorExpr)
	return ok && sel.Sel.Name == "NewScript"
}

func docOf(gd *ast.GenDecl, vs *ast.ValueSpec) string {
	if vs.Doc != nil {
		return vs.Doc.Text()
	}
	if gd.Doc != nil {
		return gd.Doc.Text()
	}
	return ""
}

// The blobs after ARGV[1] reach finish in their places: the tail's events
// before the final one (the first not twice when its append was made under
// its key), the record's fields (an error kept, the payload dropped) and
// the history entries; and a job given back waits under its new task.
func TestFinishReadsItsBlobs(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	id := "job_blobs"
	if _, _, err := s.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: "s", Queue: "q", CreatedAt: time.Now(), Payload: []byte("p")}); err != nil {
		t.Fatal(err)
	}
	if a, err := s.StartAttempt(ctx, id, "t", "s", id, "", false, time.Minute); err != nil || a.N != 1 {
		t.Fatalf("start: %+v %v", a, err)
	}
	if ok, err := s.MarkGivenBack(ctx, id, "t", "s", 1, id+":back"); err != nil || !ok {
		t.Fatalf("give back: %v %v", ok, err)
	}
	if j, _ := s.Get(ctx, id); j.Status != StatusQueued || j.Task != id+":back" {
		t.Fatalf("given back: %+v", j)
	}
	a, err := s.StartAttempt(ctx, id, "t", "s", id+":back", "", false, time.Minute)
	if err != nil || a.N != 1 || a.Fence != 2 {
		t.Fatalf("start again: %+v %v", a, err)
	}
	// the tail's first event was appended, but its reply was lost
	if _, err := s.AppendEvent(ctx, id, a.Fence, 3, TokenEvent{Delta: "a"}); err != nil {
		t.Fatal(err)
	}
	o := Outcome{Status: StatusFailed, Error: &JobError{Code: "c", Message: "m"},
		Tail:    Tail{Unconfirmed: []Payload{TokenEvent{Delta: "a"}, TokenEvent{Delta: "b"}}, N: 3, Text: "c"},
		History: []Message{{Role: "user", Content: "q"}}}
	if f, err := s.Finish(ctx, id, "t", "s", a.Fence, o); err != nil || !f.First {
		t.Fatalf("finish: %+v %v", f, err)
	}
	evs, err := s.Events(ctx, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Type+" "+ev.Data)
	}
	want := []string{`token {"seq":1,"delta":"a"}`, `token {"seq":2,"delta":"b"}`, `token {"seq":3,"delta":"c"}`,
		`error {"seq":4,"error":{"code":"c","message":"m"}}`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	j, err := s.Get(ctx, id)
	if err != nil || j.Status != StatusFailed || j.Error == nil || j.Error.Code != "c" || j.FinishedAt.IsZero() || j.Result != nil {
		t.Fatalf("record %+v %v", j, err)
	}
	if p, _ := s.rdb.HExists(ctx, rkeys.Job(id), "payload").Result(); p {
		t.Fatal("the payload outlived the job")
	}
	if h, err := s.History(ctx, "t", "s"); err != nil || len(h) != 1 || h[0].Content != "q" {
		t.Fatalf("history %+v %v", h, err)
	}
}
