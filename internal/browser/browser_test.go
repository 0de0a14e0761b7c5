package browser

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/chromedp/chromedp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestStartLoadsAPage starts the browser, loads a page whose script adds an
// element, waits for it, and saves a screenshot in REALMNET_TEST_ARTIFACTS.
func TestStartLoadsAPage(t *testing.T) {
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><title>t</title><body><script>
setTimeout(() => { const p = document.createElement('p'); p.id = 'late'; p.textContent = 'rendered'; document.body.append(p); }, 100);
</script></body>`)
	}))
	defer page.Close()

	ctx := Start(t)
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(page.URL), chromedp.WaitReady(chromedp.CSS("#late"))); err != nil {
		t.Fatalf("load %s and wait for #late: %v", page.URL, err)
	}
	text, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS("#late")))
	if err != nil || text != "rendered" {
		t.Fatalf("#late: %q, %v; want \"rendered\"", text, err)
	}

	dir := t.TempDir()
	t.Setenv(ArtifactsEnv, filepath.Join(dir, "artifacts"))
	path := Screenshot(t, ctx, "browser/start")
	if want := filepath.Join(dir, "artifacts", "browser_start.png"); path != want {
		t.Errorf("Screenshot path %s, want %s", path, want)
	}
	png, err := os.ReadFile(path)
	if err != nil || !strings.HasPrefix(string(png), "\x89PNG") {
		t.Errorf("screenshot %s: not a PNG (%v)", path, err)
	}
}

// recorder is a testing.TB that records Skipf and Fatalf and ends the
// goroutine as they do.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// start runs Start on r in a goroutine of its own (Skipf and Fatalf end it).
func (r *recorder) start() {
	var wg sync.WaitGroup
	wg.Go(func() { Start(r) })
	wg.Wait()
}

// TestStartWithoutBrowser: with no browser on PATH, Start skips the test,
// or fails it when REALMNET_REQUIRE_BROWSER is set; both say what to
// install.
func TestStartWithoutBrowser(t *testing.T) {
	t.Setenv("PATH", t.TempDir())

	t.Setenv(RequireEnv, "")
	r := &recorder{TB: t}
	r.start()
	if r.failed != "" || !strings.Contains(r.skipped, "chromium package") || !strings.Contains(r.skipped, RequireEnv) {
		t.Errorf("without %s: skipped %q, failed %q; want a skip naming the chromium package and %s", RequireEnv, r.skipped, r.failed, RequireEnv)
	}

	t.Setenv(RequireEnv, "1")
	r = &recorder{TB: t}
	r.start()
	if r.skipped != "" || !strings.Contains(r.failed, "chromium package") {
		t.Errorf("with %s=1: skipped %q, failed %q; want a failure naming the chromium package", RequireEnv, r.skipped, r.failed)
	}
}

// TestStartBrowserThatExits: a browser that exits during its start is
// started startAttempts times, each failure logged, and then fails the
// test with its error.
func TestStartBrowserThatExits(t *testing.T) {
	dir := t.TempDir()
	starts := filepath.Join(dir, "starts")
	script := "#!/bin/sh\necho start >> " + starts + "\necho 'no display for you' >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(dir, "chromium"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	r := &recorder{TB: t}
	r.start()
	if !strings.Contains(r.failed, "start the browser") {
		t.Errorf("failed %q; want the start's error", r.failed)
	}
	got, err := os.ReadFile(starts)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(got), "start"); n != startAttempts {
		t.Errorf("the browser was started %d times, want %d", n, startAttempts)
	}
}
