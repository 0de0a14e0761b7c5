package layering

import (
	"bufio"
	"bytes"
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The table's place and shape. docPath is relative to the module root.
const (
	docPath     = "docs/architecture.md"
	beginMarker = "<!-- layering:begin -->"
	endMarker   = "<!-- layering:end -->"
	// leaf is the vocabulary package: it imports nothing of realmnet.
	leaf = "core"
)

// header is the table's header row, cell by cell.
var header = []string{"package", "may import (realmnet packages)", "test only"}

// row is one package of the table.
type row struct {
	pkg      string   // path relative to the module root, e.g. "internal/testkit"
	allowed  []string // the realmnet packages it may import, as written
	testOnly bool     // only tests and other test-only packages may import it
	line     int      // line of the row in docPath
}

// where names the row for error messages: "docs/architecture.md:123".
func (r *row) where() string { return fmt.Sprintf("%s:%d", docPath, r.line) }

// table is the parsed layering table.
type table struct {
	rows  map[string]*row
	order []string // packages in the order of the table
}

// ref is one import of a realmnet package by a non-test file.
type ref struct {
	file string // relative to the module root, slash-separated
	line int
	path string // the import path as written
	pkg  string // the imported package, relative to the module root
}

// pkgInfo is one package of the module: a directory with at least one
// non-test .go file.
type pkgInfo struct {
	dir     string // relative to the module root, slash-separated; "." for the root
	imports []ref  // realmnet imports of its non-test files, in file order
}

// TestTable checks the table on its own: every package it names is one of
// its rows, core may import nothing, a package that is not test-only may not
// import a test-only one, and the allowed imports form no cycle.
func TestTable(t *testing.T) {
	root, _ := moduleRoot(t)
	tab := readTable(t, filepath.Join(root, docPath))

	for _, name := range tab.order {
		r := tab.rows[name]
		for _, dep := range r.allowed {
			target, ok := tab.rows[dep]
			switch {
			case dep == name:
				t.Errorf("%s: %s lists itself as an allowed import", r.where(), name)
			case !ok:
				t.Errorf("%s: %s may import %s, but the table has no row for %s (a typo, or a row is missing)",
					r.where(), name, dep, dep)
			case target.testOnly && !r.testOnly:
				t.Errorf("%s: %s may import the test-only package %s (%s); only test-only packages may import it",
					r.where(), name, dep, target.where())
			}
		}
	}
	if r, ok := tab.rows[leaf]; !ok {
		t.Errorf("%s: the table has no row for %s, the vocabulary leaf", docPath, leaf)
	} else if len(r.allowed) > 0 {
		t.Errorf("%s: %s may import %s; %s is the vocabulary leaf and must import nothing of realmnet",
			r.where(), leaf, strings.Join(r.allowed, ", "), leaf)
	}
	for _, cycle := range cycles(tab) {
		steps := make([]string, len(cycle))
		for i, name := range cycle {
			steps[i] = fmt.Sprintf("%s (line %d)", name, tab.rows[name].line)
		}
		t.Errorf("%s: the allowed imports form a cycle: %s; the table must be acyclic",
			docPath, strings.Join(steps, " → "))
	}
}

// TestEveryPackageListed checks that the table lists exactly the module's
// packages.
func TestEveryPackageListed(t *testing.T) {
	root, module := moduleRoot(t)
	tab := readTable(t, filepath.Join(root, docPath))
	pkgs := readPackages(t, root, module)

	for _, dir := range sortedKeys(pkgs) {
		if _, ok := tab.rows[dir]; !ok {
			t.Errorf("package %s (%s/) is not in the table in %s: add a row saying which realmnet packages it may import",
				dir, dir, docPath)
		}
	}
	for _, name := range tab.order {
		if _, ok := pkgs[name]; !ok {
			t.Errorf("%s: the table lists %s, but the module has no such package (no non-test .go file in %s/): remove the row",
				tab.rows[name].where(), name, name)
		}
	}
}

// TestImportsAllowed checks every import of a realmnet package by a
// non-test .go file against the table.
func TestImportsAllowed(t *testing.T) {
	root, module := moduleRoot(t)
	tab := readTable(t, filepath.Join(root, docPath))
	pkgs := readPackages(t, root, module)

	used := make(map[[2]string]bool) // {importer, imported}
	for _, dir := range sortedKeys(pkgs) {
		r, listed := tab.rows[dir]
		if !listed {
			continue // TestEveryPackageListed reports it
		}
		for _, imp := range pkgs[dir].imports {
			used[[2]string{dir, imp.pkg}] = true
			target := tab.rows[imp.pkg]
			switch {
			case dir == leaf:
				t.Errorf("%s:%d: %s imports %q, but %s is the vocabulary leaf and imports nothing of realmnet (%s); move what it needs into %s, or the code that needs it out of %s",
					imp.file, imp.line, leaf, imp.path, leaf, r.where(), leaf, leaf)
			case target != nil && target.testOnly && !r.testOnly:
				t.Errorf("%s:%d: %s imports the test-only package %q (%s): only _test.go files and test-only packages may import it",
					imp.file, imp.line, dir, imp.path, target.where())
			case !slices.Contains(r.allowed, imp.pkg):
				t.Errorf("%s:%d: %s imports %q, which its row %s does not allow (it may import: %s); remove the import or, if the edge is intended, add %s to that row (the table must stay acyclic)",
					imp.file, imp.line, dir, imp.path, r.where(), allowedList(r), imp.pkg)
			}
		}
	}
	// An allowed edge that no file uses is not an error (the table says
	// "may"), but it may be stale.
	for _, name := range tab.order {
		r := tab.rows[name]
		for _, dep := range r.allowed {
			if _, exists := pkgs[name]; exists && !used[[2]string{name, dep}] {
				t.Logf("%s: %s may import %s, but no non-test file of %s does", r.where(), name, dep, name)
			}
		}
	}
}

func allowedList(r *row) string {
	if len(r.allowed) == 0 {
		return "nothing of realmnet"
	}
	return strings.Join(r.allowed, ", ")
}

// moduleRoot walks up from the working directory (the package's directory
// under go test) to the directory holding go.mod, and returns it with the
// module path.
func moduleRoot(t *testing.T) (root, module string) {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("working directory: %v", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil {
			module = modulePath(data)
			if module == "" {
				t.Fatalf("%s: no module line", filepath.Join(dir, "go.mod"))
			}
			return dir, module
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// modulePath returns the path of go.mod's module directive, or "".
func modulePath(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "module" {
			if p, err := strconv.Unquote(fields[1]); err == nil {
				return p
			}
			return fields[1]
		}
	}
	return ""
}

var (
	// nameRE is a package path as the table writes it, backticks removed.
	nameRE = regexp.MustCompile(`^[a-z0-9_.-]+(/[a-z0-9_.-]+)*$`)
	// separatorRE is a cell of the table's separator row.
	separatorRE = regexp.MustCompile(`^:?-+:?$`)
)

// readTable parses the table between the markers of the document at path.
// Format (one row per package, names in backticks, "—" for none):
//
//	| package | may import (realmnet packages) | test only |
//	|---|---|---|
//	| `gater` | `core`, `hooks` | |
//	| `internal/testkit` | `core` | yes |
func readTable(t *testing.T, path string) *table {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read the layering table: %v", err)
	}
	lines := strings.Split(string(data), "\n")
	begin, end := -1, -1
	for i, l := range lines {
		switch strings.TrimSpace(l) {
		case beginMarker:
			if begin >= 0 {
				t.Fatalf("%s:%d: a second %s (first on line %d)", docPath, i+1, beginMarker, begin+1)
			}
			begin = i
		case endMarker:
			if end >= 0 {
				t.Fatalf("%s:%d: a second %s (first on line %d)", docPath, i+1, endMarker, end+1)
			}
			end = i
		}
	}
	if begin < 0 || end < 0 || end < begin {
		t.Fatalf("%s: the layering table must stand between a %s line and a later %s line", docPath, beginMarker, endMarker)
	}

	tab := &table{rows: make(map[string]*row)}
	sawHeader := false
	for i := begin + 1; i < end; i++ {
		lineNo := i + 1
		text := strings.TrimSpace(lines[i])
		if !strings.HasPrefix(text, "|") {
			continue // prose or blank lines around the table
		}
		cells := splitRow(text)
		if !sawHeader {
			if !slices.Equal(cells, header) {
				t.Fatalf("%s:%d: the table's header must be | %s |, got | %s |",
					docPath, lineNo, strings.Join(header, " | "), strings.Join(cells, " | "))
			}
			sawHeader = true
			continue
		}
		if isSeparator(cells) {
			continue
		}
		if len(cells) != len(header) {
			t.Errorf("%s:%d: a row needs %d cells (%s), got %d", docPath, lineNo, len(header), strings.Join(header, ", "), len(cells))
			continue
		}
		r := &row{line: lineNo}
		names, err := parseNames(cells[0])
		if err != nil || len(names) != 1 {
			t.Errorf("%s:%d: the first cell must name one package in backticks, got %q", docPath, lineNo, cells[0])
			continue
		}
		r.pkg = names[0]
		if r.allowed, err = parseNames(cells[1]); err != nil {
			t.Errorf("%s:%d: %s: %v", docPath, lineNo, r.pkg, err)
			continue
		}
		for j, dep := range r.allowed {
			if slices.Contains(r.allowed[:j], dep) {
				t.Errorf("%s:%d: %s lists %s twice", docPath, lineNo, r.pkg, dep)
			}
		}
		switch strings.ToLower(cells[2]) {
		case "yes":
			r.testOnly = true
		case "", "no", "—", "-":
		default:
			t.Errorf("%s:%d: %s: the test-only cell must be \"yes\" or empty, got %q", docPath, lineNo, r.pkg, cells[2])
		}
		if prev, dup := tab.rows[r.pkg]; dup {
			t.Errorf("%s:%d: %s has a second row (first on line %d)", docPath, lineNo, r.pkg, prev.line)
			continue
		}
		tab.rows[r.pkg] = r
		tab.order = append(tab.order, r.pkg)
	}
	if !sawHeader || len(tab.rows) == 0 {
		t.Fatalf("%s:%d: no table rows between the markers", docPath, begin+1)
	}
	return tab
}

// splitRow returns the trimmed cells of a Markdown table row.
func splitRow(text string) []string {
	text = strings.TrimSuffix(strings.TrimPrefix(text, "|"), "|")
	cells := strings.Split(text, "|")
	for i, c := range cells {
		cells[i] = strings.TrimSpace(c)
	}
	return cells
}

func isSeparator(cells []string) bool {
	for _, c := range cells {
		if !separatorRE.MatchString(c) {
			return false
		}
	}
	return true
}

// parseNames parses a cell of comma-separated package names in backticks;
// "—", "-" or an empty cell is none.
func parseNames(cell string) ([]string, error) {
	if cell == "" || cell == "—" || cell == "-" {
		return nil, nil
	}
	var out []string
	for _, part := range strings.Split(cell, ",") {
		part = strings.TrimSpace(part)
		name, ok := strings.CutPrefix(part, "`")
		if ok {
			name, ok = strings.CutSuffix(name, "`")
		}
		name = strings.TrimSuffix(name, "/")
		if !ok || !nameRE.MatchString(name) {
			return nil, fmt.Errorf("%q is not a package path in backticks (want e.g. `core`, `internal/eventqueue`)", part)
		}
		out = append(out, name)
	}
	return out, nil
}

// readPackages parses the imports of every non-test .go file under root,
// by directory. Directories whose name starts with "." or "_", testdata,
// vendor and nested modules are skipped, as the go tool skips them. Build
// constraints are ignored: a file counts whatever platform or tags it is
// built for.
func readPackages(t *testing.T, root, module string) map[string]*pkgInfo {
	t.Helper()
	pkgs := make(map[string]*pkgInfo)
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root {
				if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor" {
					return filepath.SkipDir
				}
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
					return filepath.SkipDir // another module
				}
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return fmt.Errorf("parse %s: %w", rel, err)
		}
		dir := pathDir(rel)
		info := pkgs[dir]
		if info == nil {
			info = &pkgInfo{dir: dir}
			pkgs[dir] = info
		}
		for _, spec := range f.Imports {
			ip, err := strconv.Unquote(spec.Path.Value)
			if err != nil {
				return fmt.Errorf("%s: import %s: %w", rel, spec.Path.Value, err)
			}
			pkg, ok := realmnetPackage(module, ip)
			if !ok {
				continue
			}
			info.imports = append(info.imports, ref{
				file: rel, line: fset.Position(spec.Pos()).Line, path: ip, pkg: pkg,
			})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read the module's packages under %s: %v", root, err)
	}
	if len(pkgs) == 0 {
		t.Fatalf("no Go package under %s", root)
	}
	return pkgs
}

// pathDir is path.Dir for slash-separated relative paths: "." for a file
// at the root.
func pathDir(rel string) string {
	i := strings.LastIndex(rel, "/")
	if i < 0 {
		return "."
	}
	return rel[:i]
}

// realmnetPackage returns the package an import path names relative to the
// module root ("." for the module's root package), and whether it is one of
// the module's.
func realmnetPackage(module, importPath string) (string, bool) {
	if importPath == module {
		return ".", true
	}
	rel, ok := strings.CutPrefix(importPath, module+"/")
	return rel, ok
}

// cycles returns the cycles of the table's allowed imports, each as the
// packages along it with the first repeated at the end. Edges to packages
// without a row are ignored (TestTable reports them).
func cycles(tab *table) [][]string {
	const (
		unvisited = iota
		onStack
		done
	)
	state := make(map[string]int)
	var stack []string
	var out [][]string
	var visit func(name string)
	visit = func(name string) {
		state[name] = onStack
		stack = append(stack, name)
		for _, dep := range tab.rows[name].allowed {
			if _, ok := tab.rows[dep]; !ok {
				continue
			}
			switch state[dep] {
			case unvisited:
				visit(dep)
			case onStack:
				i := slices.Index(stack, dep)
				cycle := append(slices.Clone(stack[i:]), dep)
				out = append(out, cycle)
			}
		}
		stack = stack[:len(stack)-1]
		state[name] = done
	}
	for _, name := range tab.order {
		if state[name] == unvisited {
			visit(name)
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
