package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/realmnet/realmnet/internal/testkit"
)

func TestMain(m *testing.M) {
	if os.Getenv(ChildEnv) == "1" {
		// The protocol owns stdout; anything else printing goes to stderr.
		out := os.Stdout
		os.Stdout = os.Stderr
		os.Exit(Serve(os.Stdin, out))
	}
	goleak.VerifyTestMain(m, testkit.LeakOptions()...)
}

// errExited is returned by calls to a child that has exited or was killed.
var errExited = errors.New("soak: child exited")

// proc is one child process, seen from the parent.
type proc struct {
	name  string
	cmd   *exec.Cmd
	log   *os.File
	stdin io.WriteCloser

	wmu sync.Mutex // serialises writes to stdin

	mu   sync.Mutex
	next int64
	wait map[int64]chan Response

	done chan struct{} // closed when the reader has seen stdout end
	once sync.Once
}

// spawn starts the test binary as a child; its stderr goes to
// logDir/name.log.
func spawn(logDir, name string) (*proc, error) {
	f, err := os.Create(filepath.Join(logDir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), ChildEnv+"=1")
	cmd.Stderr = f
	stdin, err := cmd.StdinPipe()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, log: f, stdin: stdin, wait: map[int64]chan Response{}, done: make(chan struct{})}
	go p.read(stdout)
	return p, nil
}

func (p *proc) read(stdout io.Reader) {
	defer close(p.done)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		var r Response
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue
		}
		p.mu.Lock()
		ch, ok := p.wait[r.ID]
		delete(p.wait, r.ID)
		p.mu.Unlock()
		if ok {
			ch <- r // buffered
		}
	}
}

// call sends req and waits for its response, ctx's end or the child's exit.
// A response with Err set is returned as an error too.
func (p *proc) call(ctx context.Context, req Request) (Response, error) {
	ch := make(chan Response, 1)
	p.mu.Lock()
	p.next++
	req.ID = p.next
	p.wait[req.ID] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.wait, req.ID)
		p.mu.Unlock()
	}()
	line, err := json.Marshal(req)
	if err != nil {
		return Response{}, err
	}
	p.wmu.Lock()
	_, err = p.stdin.Write(append(line, '\n'))
	p.wmu.Unlock()
	if err != nil {
		return Response{}, fmt.Errorf("%s: %w (%v)", p.name, errExited, err)
	}
	select {
	case r := <-ch:
		if r.Err != "" {
			return r, fmt.Errorf("%s: %s %d: %s", p.name, req.Op, req.Node, r.Err)
		}
		return r, nil
	case <-p.done:
		return Response{}, fmt.Errorf("%s: %w", p.name, errExited)
	case <-ctx.Done():
		return Response{}, fmt.Errorf("%s: %s: %w", p.name, req.Op, ctx.Err())
	}
}

// kill SIGKILLs the child and reaps it. Safe to call more than once.
func (p *proc) kill() {
	p.once.Do(func() {
		_ = p.cmd.Process.Kill()
		<-p.done // the pipe ends with the process
		_ = p.cmd.Wait()
		_ = p.log.Close()
	})
}

// exit asks the child to close its nodes and exit, then kills it if it has
// not within d.
func (p *proc) exit(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, _ = p.call(ctx, Request{Op: OpExit})
	p.kill()
}
