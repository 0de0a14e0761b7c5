//go:build !linux

package natlab

import (
	"fmt"
	"net"
	"os"
	"runtime"
)

// errNotLinux says why the lab cannot run on this system.
var errNotLinux = fmt.Errorf("%w: it needs Linux network and user namespaces, and this is %s", ErrUnavailable, runtime.GOOS)

// findTools fails: New skips the test before it starts anything.
func findTools() (tools, error) { return tools{}, errNotLinux }

// The rest of the lab exists on Linux only; New never reaches these.

func streamPair() (net.Conn, *os.File, error)        { return nil, nil, errNotLinux }
func sendMsg(*net.UnixConn, any, ...*os.File) error  { return errNotLinux }
func recvMsg(*net.UnixConn, any) ([]*os.File, error) { return nil, errNotLinux }
func (l *Lab) start() error                          { return errNotLinux }
func (l *Lab) build([]*member) error                 { return errNotLinux }
func serveAgent() int {
	fmt.Fprintln(os.Stderr, "natlab:", errNotLinux)
	return 1
}
