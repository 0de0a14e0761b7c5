// Package browser starts a headless Chromium for tests that check a web page
// in a real browser (the debug endpoint's live page), through chromedp. It
// is for tests only.
package browser

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Environment variables that change what the helpers do.
const (
	// RequireEnv, when set to anything but the empty string, makes Start
	// fail the test when no browser is installed; unset, Start skips it.
	// Set it where the browser tests must run (CI).
	RequireEnv = "REALMNET_REQUIRE_BROWSER"
	// ArtifactsEnv names a directory where Screenshot saves its images, to
	// keep them after the test; unset, they go to the test's t.TempDir().
	ArtifactsEnv = "REALMNET_TEST_ARTIFACTS"
)

// Timeout is a generous bound for one browser step (start, load, wait for
// the DOM): Chromium can take tens of seconds to start on a busy two-core
// machine. Tests should wait for DOM state with it, never sleep.
const Timeout = 60 * time.Second

// execNames are the browser executables Start looks for, in order: Debian's
// chromium package, other distributions' name, Google's build.
var execNames = []string{"chromium", "chromium-browser", "google-chrome"}

// Start starts a headless Chromium and returns a chromedp context on its
// first tab; run actions on it with chromedp.Do and chromedp.Run, each
// bounded by a context.WithTimeout of it (a timeout does not end the
// browser). At the end of the test (t.Cleanup) the browser is stopped and
// every goroutine of chromedp has returned, so goleak stays quiet.
//
// Start looks for "chromium", "chromium-browser" and "google-chrome" on
// PATH. When none is there it skips the test, or fails it when the
// environment variable REALMNET_REQUIRE_BROWSER is not empty; the message
// says to install Debian's chromium package. It fails the test when the
// browser does not start within Timeout, or exits during its start
// startAttempts times in a row (each failed start is logged).
//
// The browser runs headless, without GPU and without its sandbox (which
// needs user namespaces that containers often lack, and root cannot use);
// it should only load pages of the test's own servers.
func Start(t testing.TB) context.Context {
	t.Helper()
	path, err := find()
	if err != nil {
		if os.Getenv(RequireEnv) != "" {
			t.Fatalf("%v; install Debian's chromium package (apt-get install chromium): %s is set, so the browser tests must run", err, RequireEnv)
		}
		t.Skipf("%v; install Debian's chromium package (apt-get install chromium) to run this test, or set %s=1 to fail instead of skipping", err, RequireEnv)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.DisableGPU,
		chromedp.NoSandbox,
		chromedp.WindowSize(1400, 1000),
	)
	for attempt := 1; attempt <= startAttempts; attempt++ {
		var ctx context.Context
		ctx, err = launch(t, opts)
		if err == nil {
			return ctx
		}
		if errors.Is(err, errStartTimeout) {
			break
		}
		t.Logf("start the browser %s, attempt %d of %d: %v", path, attempt, startAttempts, err)
	}
	t.Fatalf("start the browser %s: %v", path, err)
	return nil
}

// startAttempts is how many times Start starts the browser when it exits
// during its start. Debian's chromium crashed at start once (crashpad's
// "no stack mapping" in its output, "chrome failed to start") while the
// whole test suite ran on two cores, and started at once when run again;
// a second failure fails the test.
const startAttempts = 2

// errStartTimeout: the browser neither started nor exited within Timeout.
var errStartTimeout = fmt.Errorf("the browser did not start within %v", Timeout)

// launch starts a browser with opts and waits, at most Timeout, for its
// first tab. On success the browser is stopped at the end of the test; on
// failure it is stopped before launch returns.
func launch(t testing.TB, opts []chromedp.ExecAllocatorOption) (context.Context, error) {
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)

	// The first action starts the browser, tied to the context it runs on
	// (chromedp starts the process with it), so it runs on ctx itself and
	// the wait for it is bounded here.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	stop := func(waited bool) {
		cancelTab() // stops the browser and waits for it
		if !waited {
			<-started
		}
		cancelAlloc() // waits for the allocator's goroutines
	}

	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	select {
	case err := <-started:
		if err != nil {
			stop(true)
			return nil, err
		}
		t.Cleanup(func() { stop(true) })
		return ctx, nil
	case <-timer.C:
		t.Cleanup(func() { stop(false) })
		return nil, errStartTimeout
	}
}

// find returns the path of the first of execNames on PATH.
func find() (string, error) {
	for _, name := range execNames {
		if path, err := exec.LookPath(name); err == nil {
			return path, nil
		}
	}
	return "", fmt.Errorf("no browser found: none of %s is on PATH", strings.Join(execNames, ", "))
}

// Screenshot takes a full-page PNG screenshot of ctx's tab (a context from
// Start) and saves it as <name>.png in the directory REALMNET_TEST_ARTIFACTS
// names (created if needed), or else in t.TempDir(). It logs the file's path
// and returns it; it fails the test when the screenshot or the file cannot
// be made. name should be unique in the run, e.g. the test's name; slashes
// and backslashes in it become "_".
func Screenshot(t testing.TB, ctx context.Context, name string) string {
	t.Helper()
	dir := os.Getenv(ArtifactsEnv)
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("screenshot %s: create the artifacts directory %s=%s: %v", name, ArtifactsEnv, dir, err)
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if len(png) == 0 {
		t.Fatalf("screenshot %s: the browser returned an empty image", name)
	}
	path := filepath.Join(dir, strings.NewReplacer("/", "_", `\`, "_").Replace(name)+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	t.Logf("screenshot %s: %s (%d bytes)", name, path, len(png))
	return path
}
