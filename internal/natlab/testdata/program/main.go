// Command program builds a NAT lab as a program, not a test, would
// (natlab.Build, Lab.StartRole, Lab.Close) for TestBuildFromAProgram: the
// lab re-executes it, a binary without -test flags. It prints what its
// roles answered, one line each, and exits with status 1 on an error.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/realmnet/realmnet/internal/natlab"
)

func main() {
	natlab.RunIfChild(map[string]natlab.Role{"hello": hello})
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "program:", err)
		if errors.Is(err, natlab.ErrUnavailable) {
			os.Exit(3)
		}
		os.Exit(1)
	}
}

// hello says where it runs and with which arguments, then echoes every
// line of its input.
func hello(args []string, in io.Reader, out io.Writer) error {
	fmt.Fprintf(out, "hello from %s args=%q\n", os.Getenv("NATLAB_NAME"), args)
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		fmt.Fprintf(out, "echo %s\n", lines.Text())
	}
	return lines.Err()
}

func run() error {
	lab, err := natlab.Build(natlab.Topology{
		Public: []string{"p1"},
		Sites:  []natlab.Site{{Router: "r1", NAT: natlab.EndpointIndependent, Hosts: []string{"h1"}}},
	})
	if err != nil {
		return err
	}
	defer lab.Close()
	closed, err := lab.StartRole("h1", "hello", "x", "--", "y z")
	if err != nil {
		return err
	}
	left, err := lab.StartRole("p1", "hello")
	if err != nil {
		return err
	}
	for _, p := range []*natlab.Proc{closed, left} {
		line, err := p.Recv(20 * time.Second)
		if err != nil {
			return err
		}
		fmt.Println(line)
	}
	if err := closed.Send("ping"); err != nil {
		return err
	}
	line, err := closed.Recv(20 * time.Second)
	if err != nil {
		return err
	}
	fmt.Println(line)
	if err := closed.Close(); err != nil {
		return err
	}
	// left still runs: Close kills it.
	if err := lab.Close(); err != nil {
		return err
	}
	if _, err := lab.StartRole("h1", "hello"); err == nil {
		return errors.New("StartRole after Close succeeded")
	} else if !strings.Contains(err.Error(), "closed") {
		return fmt.Errorf("StartRole after Close: %v, want an error saying the lab is closed", err)
	}
	fmt.Println("closed")
	return nil
}
