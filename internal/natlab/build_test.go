package natlab

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// buildLab is Build for a test: it skips the test, or fails it when
// RequireEnv is set, where the lab cannot be built.
func buildLab(t *testing.T, topo Topology) *Lab {
	t.Helper()
	lab, err := Build(topo)
	if errors.Is(err, ErrUnavailable) {
		unavailable(t, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return lab
}

// TestBuild: a lab that Build built runs StartRole's processes in its
// namespaces like New's; Close kills the ones still running, removes the
// lab and its logs, leaves no process and no open file behind, and makes
// StartRole fail; Proc.Close and Close return nil after it.
func TestBuild(t *testing.T) {
	fds := openFDs(t)
	lab := buildLab(t, oneSite(EndpointIndependent))
	dir := lab.dir
	var procs []*Proc
	for _, host := range []struct {
		name string
		port int
	}{{"p1", publicPort}, {"h1", hostPort}} {
		p, err := lab.StartRole(host.name, "udp", strconv.Itoa(host.port))
		if err != nil {
			t.Fatal(err)
		}
		if line, err := p.Recv(wait); err != nil || !strings.HasPrefix(line, "ready ") {
			t.Fatalf("%s: first line %q, %v; want ready", p, line, err)
		}
		procs = append(procs, p)
	}
	p1, h1 := procs[0], procs[1]
	if at, _ := ping(t, h1, netip.AddrPortFrom(lab.Addr("p1"), publicPort), "1"); at != netip.AddrPortFrom(lab.Addr("r1"), hostPort) {
		t.Errorf("p1 saw h1 at %v, want %v:%d", at, lab.Addr("r1"), hostPort)
	}
	running := descendants(t, lab.sys.cmd.Process.Pid)
	if err := p1.Close(); err != nil {
		t.Errorf("Close of a role that exits on its own: %v", err)
	}

	// h1 still runs: Close kills it.
	if err := lab.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := lab.Close(); err != nil {
		t.Errorf("a second Close: %v, want nil", err)
	}
	if err := h1.Close(); err != nil {
		t.Errorf("Proc.Close after the lab's Close: %v, want nil", err)
	}
	if _, err := lab.StartRole("h1", "udp", "1"); !errors.Is(err, errClosed) {
		t.Errorf("StartRole after Close: %v, want an error saying the lab is closed", err)
	}
	for _, p := range running {
		if now, ok := readStat(p.pid); ok && now.start == p.start {
			t.Errorf("process %d (parent %d) of the lab still exists after Close", p.pid, p.ppid)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the lab's log directory %s: %v after Close, want it removed", dir, err)
	}
	if now := openFDs(t); now != fds {
		t.Errorf("the test process has %d open files after Close, %d before Build", now, fds)
	}
}

// TestBuildInvalidTopology: Build refuses an invalid topology before it
// starts anything, with an error that is not ErrUnavailable.
func TestBuildInvalidTopology(t *testing.T) {
	lab, err := Build(Topology{Public: []string{"a", "a"}})
	if lab != nil || err == nil || errors.Is(err, ErrUnavailable) ||
		!strings.HasPrefix(err.Error(), "natlab: invalid topology: ") || !strings.Contains(err.Error(), `"a"`) {
		t.Errorf("Build of a topology that names a twice: %v, %v; want an invalid topology error naming a", lab, err)
	}
}

// TestBuildFromAProgram builds testdata/program, a command that builds a
// lab, and runs it: the lab re-executes a binary that is not a test (no
// -test flags), its roles get their arguments, "--" included, and no
// process of the binary outlives it.
func TestBuildFromAProgram(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to build testdata/program: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "program")
	if out, err := exec.Command(goTool, "build", "-o", bin, "./testdata/program").CombinedOutput(); err != nil {
		t.Fatalf("build testdata/program: %v\n%s", err, out)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 3 {
		unavailable(t, fmt.Errorf("%w (said testdata/program): %s", ErrUnavailable, strings.TrimSpace(stderr.String())))
	}
	if err != nil {
		t.Fatalf("testdata/program: %v; its standard error:\n%s", err, stderr.String())
	}
	want := `hello from h1 args=["x" "--" "y z"]` + "\n" + `hello from p1 args=[]` + "\n" + "echo ping\nclosed\n"
	if stdout.String() != want {
		t.Errorf("testdata/program printed\n%s\nwant\n%s", stdout.String(), want)
	}
	for _, p := range allProcs(t) {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid)); err == nil && exe == bin {
			t.Errorf("process %d (parent %d), running testdata/program, still exists after it exited", p.pid, p.ppid)
		}
	}
}
