package natlab

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proc is a process that Lab.Start or Lab.StartRole runs in a lab
// namespace, seen from the process that started it (the test, or the
// program that built the lab): a line-based link to its role's input and
// output. Send, Recv and Close may be called concurrently; one Send and one
// Recv run at a time.
type Proc struct {
	lab  *Lab
	ns   *agent
	id   int    // the agent's handle of the process
	name string // the namespace
	role string
	log  string // the file of its standard error

	conn net.Conn // our end of the process's standard input and output

	wmu sync.Mutex // serialises Send

	rmu     sync.Mutex // serialises Recv and guards rd and partial
	rd      *bufio.Reader
	partial []byte // a line that a timeout cut, kept for the next Recv

	stopOnce sync.Once
	stopErr  error
	stopped  atomic.Bool // stop has begun
}

// String names the process in messages: `role "node" on a`.
func (p *Proc) String() string { return fmt.Sprintf("role %q on %s", p.role, p.name) }

// Send writes line and a newline to the process's standard input. It
// returns an error when line has a newline, or when the process no longer
// reads (it exited, or was closed) within a minute.
func (p *Proc) Send(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return fmt.Errorf("natlab: send to %s: the line %q has a line break", p, line)
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if err := p.conn.SetWriteDeadline(time.Now().Add(callTimeout)); err != nil {
		return fmt.Errorf("natlab: send to %s: %w", p, err)
	}
	if _, err := io.WriteString(p.conn, line+"\n"); err != nil {
		return fmt.Errorf("natlab: send to %s: %w", p, err)
	}
	return nil
}

// Recv returns the next line of the process's standard output, without its
// newline, waiting at most timeout for it. The error wraps
// os.ErrDeadlineExceeded when no whole line came in time (a part that came
// is kept for the next Recv), and io.EOF when the output ended (the
// process exited; the error has the end of its standard error).
func (p *Proc) Recv(timeout time.Duration) (string, error) {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	if err := p.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return "", fmt.Errorf("natlab: receive from %s: %w", p, err)
	}
	b, err := p.rd.ReadBytes('\n')
	p.partial = append(p.partial, b...)
	switch {
	case err == nil:
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "", fmt.Errorf("natlab: %s sent no line within %v: %w", p, timeout, err)
	case errors.Is(err, io.EOF):
		return "", fmt.Errorf("natlab: the output of %s ended (%w: it exited); its standard error:\n%s", p, io.EOF, p.stderrTail())
	default:
		return "", fmt.Errorf("natlab: receive from %s: %w", p, err)
	}
	line := strings.TrimSuffix(string(p.partial), "\n")
	p.partial = p.partial[:0]
	return line, nil
}

// Close closes the process's standard input, waits up to 10 s for it to
// exit, kills it then, and reaps it. It returns an error, with the end of
// the process's standard error, when the process had to be killed or did
// not exit with status 0 (a role's error, a panic, a data race under
// -race). Later calls return the first call's result; after the lab is
// removed, Close returns nil.
func (p *Proc) Close() error { return p.stop(stopGrace) }

// Kill kills the process at once (SIGKILL), as a crash would, and reaps
// it. It returns an error only when the lab could not do so. After Kill,
// Close returns Kill's result.
func (p *Proc) Kill() error { return p.stop(0) }

// stop ends the process once: at once when grace is 0, else after its
// input closed and up to grace.
func (p *Proc) stop(grace time.Duration) error {
	p.stopOnce.Do(func() {
		p.stopped.Store(true)
		p.stopErr = p.lab.stopProc(p, grace)
	})
	return p.stopErr
}

// stderrTail returns the end of the process's standard error.
func (p *Proc) stderrTail() string {
	if s := logTail(p.log); s != "" {
		return s
	}
	return "(empty)"
}

// startProc starts role in the named namespace; see StartRole.
func (l *Lab) startProc(name, role string, args []string) (*Proc, error) {
	if strings.HasPrefix(role, "natlab/") {
		return nil, fmt.Errorf("roles named natlab/... are the lab's own")
	}
	if l.closed.Load() {
		return nil, errClosed
	}
	a, err := l.namespace(name)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.seq++
	n := l.seq
	l.mu.Unlock()
	logPath := filepath.Join(l.dir, fmt.Sprintf("%s-%s-%d.log", name, strings.Map(fileSafe, role), n))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create its log: %w", err)
	}
	defer logf.Close()
	mine, theirs, err := streamPair()
	if err != nil {
		return nil, err
	}
	resp, err := a.call(request{Op: opStart, Role: role, Args: args}, theirs, logf)
	_ = theirs.Close() // the process's now: its exit ends the link
	if err != nil {
		_ = mine.Close()
		return nil, err
	}
	p := &Proc{lab: l, ns: a, id: resp.ID, name: name, role: role, log: logPath, conn: mine, rd: bufio.NewReader(mine)}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		// The lab was removed meanwhile, and the process with it.
		_ = mine.Close()
		return nil, errClosed
	}
	l.procs[p] = true
	return p, nil
}

// fileSafe maps a role name's runes to those of a file name.
func fileSafe(r rune) rune {
	if r < 128 && validName.MatchString(string(r)) {
		return r
	}
	return '_'
}

// stopProc closes p's link and has its agent stop and reap it; see Close
// and Kill.
func (l *Lab) stopProc(p *Proc, grace time.Duration) error {
	l.mu.Lock()
	delete(l.procs, p)
	l.mu.Unlock()
	if l.closed.Load() {
		_ = p.conn.Close()
		return nil
	}
	// The process sees its input end, while what it still writes is read
	// and dropped: a process blocked on a full link would not exit, and
	// closing the link with unread output in it would reset the
	// connection, failing the process's reads.
	drained := make(chan struct{})
	if c, ok := p.conn.(interface{ CloseWrite() error }); ok && grace > 0 {
		_ = c.CloseWrite()
		_ = p.conn.SetReadDeadline(time.Time{})
		go func() {
			defer close(drained)
			_, _ = io.Copy(io.Discard, p.conn)
		}()
	} else {
		close(drained)
	}
	resp, err := p.ns.call(request{Op: opStop, ID: p.id, Grace: grace})
	_ = p.conn.Close()
	<-drained
	switch {
	case err != nil && l.closed.Load():
		return nil
	case err != nil:
		return fmt.Errorf("natlab: stop %s: %w", p, err)
	case grace == 0:
		return nil
	case resp.Killed:
		return fmt.Errorf("natlab: %s did not exit within %v after its input closed, so it was killed; its standard error:\n%s", p, grace, p.stderrTail())
	case resp.Exit != "":
		return fmt.Errorf("natlab: %s failed: %s; its standard error:\n%s", p, resp.Exit, p.stderrTail())
	}
	return nil
}

// Close removes a lab that Build built: it kills every process of the lab
// still running (those that the caller did not close, as Proc.Kill would),
// reaps the lab's root, after which nothing of the lab runs, and removes
// the lab's log directory. No goroutine of the calling process outlives it.
// Close a Proc first to let it exit on its own and see how it ended. After
// Close, Proc.Close returns nil and StartRole fails. Close returns an
// error when the root could not be killed or reaped, or the logs could not
// be removed; later calls return nil. It is safe for concurrent use.
//
// On a lab that New built, Close removes the lab before the test's
// cleanup, which then does nothing; the test's temporary directory keeps
// the logs.
func (l *Lab) Close() error {
	first, err := l.remove()
	if !first {
		return nil
	}
	if err != nil {
		err = fmt.Errorf("natlab: remove the lab: %w", err)
	}
	if l.ownDir {
		if rmErr := os.RemoveAll(l.dir); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("natlab: remove the lab's logs: %w", rmErr))
		}
	}
	return err
}

// remove ends every process of the lab and reaps the root. Only the first
// call does so (first), and returns its error; later calls do nothing.
func (l *Lab) remove() (first bool, err error) {
	l.mu.Lock()
	if !l.closed.CompareAndSwap(false, true) {
		l.mu.Unlock()
		return false, nil
	}
	for p := range l.procs {
		_ = p.conn.Close()
	}
	clear(l.procs)
	l.mu.Unlock()
	if l.sys == nil {
		return true, nil
	}
	return true, l.sys.shutdown()
}

// close removes the lab at the end of the test that called New, unless the
// test closed it, then logs the lab's log when the test failed.
func (l *Lab) close(t testing.TB) {
	first, err := l.remove()
	if !first {
		return
	}
	if err != nil {
		t.Errorf("natlab: remove the lab: %v", err)
	}
	if t.Failed() && l.sys != nil {
		if s := logTail(l.sys.log); s != "" {
			t.Logf("natlab: the lab's log (%s):\n%s", l.sys.log, s)
		}
	}
}
