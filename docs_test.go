package main

import (
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/controllers"
)

// The reference documents what the code defines, and nothing it does not: every flag
// of the manager, every metric, every condition reason and Kubernetes Event reason.

func readReference(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("docs/reference.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// section is the text from a heading to the next heading of the same or a higher level.
func section(t *testing.T, doc, heading string) string {
	t.Helper()
	start := strings.Index(doc, "\n"+heading+"\n")
	if start < 0 {
		t.Fatalf("docs/reference.md has no %q", heading)
	}
	level := strings.Count(strings.Fields(heading)[0], "#")
	rest := doc[start+len(heading)+2:]
	for _, line := range strings.SplitAfter(rest, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.Trim(f[0], "#") == "" && len(f[0]) <= level {
			return rest[:strings.Index(rest, line)]
		}
	}
	return rest
}

// backticked returns the `quoted` tokens of a text that match re.
func backticked(text string, re *regexp.Regexp) map[string]bool {
	out := map[string]bool{}
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(text, -1) {
		if re.MatchString(m[1]) {
			out[m[1]] = true
		}
	}
	return out
}

func TestEveryFlagIsDocumentedAndNoOther(t *testing.T) {
	manager := section(t, readReference(t), "## The manager")
	documented := backticked(manager, regexp.MustCompile(`^--[a-z0-9-]+$`))
	fs := (&options{}).flagSet()
	fs.VisitAll(func(f *flag.Flag) {
		if !documented["--"+f.Name] {
			t.Errorf("flag --%s is not documented in docs/reference.md (The manager)", f.Name)
		}
		delete(documented, "--"+f.Name)
	})
	for name := range documented {
		t.Errorf("docs/reference.md documents %s, which the manager does not have", name)
	}
}

// descriptors records what a collector describes, as a registry would.
type descriptors struct{ names map[string]bool }

func (d *descriptors) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		m := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(desc.String())
		d.names[m[1]] = true
	}
	return nil
}
func (d *descriptors) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = d.Register(c)
	}
}
func (d *descriptors) Unregister(prometheus.Collector) bool { return false }

func TestEveryMetricIsDocumentedAndNoOther(t *testing.T) {
	doc := readReference(t)
	table := section(t, doc, "### Metrics")
	defined := &descriptors{names: map[string]bool{}}
	if err := controllers.NewMetrics().Register(defined); err != nil {
		t.Fatal(err)
	}
	if len(defined.names) < 10 {
		t.Fatalf("only %d metrics described: %v", len(defined.names), defined.names)
	}
	rows := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		if cells := strings.Split(line, "|"); len(cells) > 2 && strings.HasPrefix(strings.TrimSpace(cells[1]), "`hookline_") {
			rows[strings.Trim(strings.TrimSpace(cells[1]), "`")] = true
		}
	}
	for name := range defined.names {
		if !rows[name] {
			t.Errorf("metric %s has no row in docs/reference.md (Metrics)", name)
		}
	}
	for name := range backticked(doc, regexp.MustCompile(`^hookline_[a-z_]+$`)) {
		if !defined.names[name] {
			t.Errorf("docs/reference.md names metric %s, which the manager does not define", name)
		}
	}
}

// apiConstants are the values of the constants of api/v1alpha1/constants.go whose
// names start with prefix and whose values are reason-shaped (CamelCase words; not
// EventLabel's "hookline.dev/event").
func apiConstants(t *testing.T, prefix string) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "api/v1alpha1/constants.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, decl := range f.Decls {
		g, ok := decl.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			v := spec.(*ast.ValueSpec)
			for i, name := range v.Names {
				lit, ok := v.Values[i].(*ast.BasicLit)
				if !ok || !strings.HasPrefix(name.Name, prefix) {
					continue
				}
				value, _ := strconv.Unquote(lit.Value)
				if reasonShaped.MatchString(value) {
					out[value] = name.Name
				}
			}
		}
	}
	return out
}

var reasonShaped = regexp.MustCompile(`^[A-Z][A-Za-z]+$`)

// column returns the backticked values of one column of a Markdown table.
func column(text string, index int) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) <= index+1 || strings.HasPrefix(strings.TrimSpace(cells[1]), "---") {
			continue
		}
		for v := range backticked(cells[index+1], reasonShaped) {
			out[v] = true
		}
	}
	return out
}

func TestEveryReasonIsDocumentedAndNoOther(t *testing.T) {
	doc := readReference(t)
	reasons := column(section(t, doc, "### Condition reasons"), 3)
	events := column(section(t, doc, "### Kubernetes Events"), 2)
	for value, name := range apiConstants(t, "Reason") {
		if !reasons[value] && !events[value] {
			t.Errorf("%s (%q) is in neither table of docs/reference.md", name, value)
		}
	}
	for value, name := range apiConstants(t, "Event") {
		if !events[value] {
			t.Errorf("%s (%q) has no row in docs/reference.md (Kubernetes Events)", name, value)
		}
	}
	known := apiConstants(t, "Reason")
	for v, n := range apiConstants(t, "Event") {
		known[v] = n
	}
	// A delivery's Warning Event is named by its phase.
	known[string(hooklinev1.PhaseFailed)], known[string(hooklinev1.PhaseExhausted)] = "PhaseFailed", "PhaseExhausted"
	for v := range reasons {
		if known[v] == "" {
			t.Errorf("docs/reference.md documents reason %q, which api/v1alpha1 does not define", v)
		}
	}
	for v := range events {
		if known[v] == "" {
			t.Errorf("docs/reference.md documents Event reason %q, which api/v1alpha1 does not define", v)
		}
	}
}
