package debugapi

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/realmnet/realmnet/internal/browser"
)

// TestPageInBrowser loads the live page in headless Chromium, without and
// with a token, waits until it has rendered every peer, path and realm of
// the fake Source, checks that markup in the data stayed text, and saves a
// screenshot.
func TestPageInBrowser(t *testing.T) {
	ctx := browser.Start(t)
	f := newFakeSource(t)

	t.Run("open", func(t *testing.T) {
		s := listen(t, Config{Source: f})
		checkPage(t, ctx, f, s.URL()+"/")
		browser.Screenshot(t, ctx, "debugapi-page")
	})

	t.Run("token", func(t *testing.T) {
		s := listen(t, Config{Source: f, Token: testToken})
		checkPage(t, ctx, f, s.URL()+"/?token="+url.QueryEscape(testToken))
		browser.Screenshot(t, ctx, "debugapi-page-token")
	})
}

// checkPage navigates ctx's tab to pageURL and checks what it renders.
func checkPage(t *testing.T, ctx context.Context, f *fakeSource, pageURL string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, browser.Timeout)
	defer cancel()

	response, err := chromedp.Run(ctx, chromedp.NavigateResponse(pageURL))
	if err != nil {
		t.Fatalf("load the page: %v", err)
	}
	if response.Status != 200 {
		t.Fatalf("load the page: status %d, want 200", response.Status)
	}

	// Wait until the page has rendered every peer, path and realm.
	var selectors []string
	for _, p := range f.peers {
		selectors = append(selectors, attribute("data-peer", p.ID))
	}
	for _, p := range f.paths {
		selectors = append(selectors, attribute("data-path", p.ConnID))
	}
	for _, r := range f.realms {
		selectors = append(selectors, attribute("data-realm", r.Name))
	}
	selectors = append(selectors, attribute("data-peer", f.node.ID))
	for _, sel := range selectors {
		if err := chromedp.Do(ctx, chromedp.WaitReady(chromedp.CSS(sel))); err != nil {
			status, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('status').textContent`))
			t.Fatalf("wait for %s on the page: %v (page status: %q)", sel, err, status)
		}
	}

	// The DOM now holds one full render.
	for _, check := range []struct {
		what, script string
		want         string
	}{
		{"status", `document.getElementById('status').className`, "status ok"},
		{"path rows", `String(document.querySelectorAll('tr[data-path]').length)`, strconv.Itoa(len(f.paths))},
		{"selected paths", `String(document.querySelectorAll('tr[data-path].selected').length)`, "2"},
		{"state of conn-b1", `document.querySelector('tr[data-path="conn-b1"] .badge').textContent`, "degraded"},
		{"pool bars", `String(document.querySelectorAll('#pools .bar').length)`, strconv.Itoa(len(f.pools))},
		{"members of chat", `String(document.querySelectorAll('[data-realm="chat"] [data-peer]').length)`, "2"},
		{"health rows", `String(document.querySelectorAll('#health tbody tr').length)`, strconv.Itoa(len(f.health))},
		{"first health row", `document.querySelector('#health tbody tr td').dataset.peer`, f.alice.String()},
		{"event rows", `String(document.querySelectorAll('#events tbody tr').length)`, strconv.Itoa(len(f.events))},
		// Markup in the data is text: no <b> or <img> came of it.
		{"markup elements", `String(document.querySelectorAll('#events b, #events img').length)`, "0"},
		{"markup as text", `String(document.getElementById('events').textContent.includes('<b>not bold</b><img src=x>'))`, "true"},
		{"uptime", `String(document.getElementById('node').textContent.includes('Uptime'))`, "true"},
	} {
		got, err := chromedp.Run(ctx, chromedp.Evaluate[string](check.script))
		if err != nil {
			t.Errorf("%s: evaluate %s: %v", check.what, check.script, err)
			continue
		}
		if got != check.want {
			t.Errorf("%s: %q, want %q", check.what, got, check.want)
		}
	}
}

// attribute is the CSS selector of the elements whose attribute name is
// value.
func attribute(name, value string) string {
	if strings.ContainsAny(value, `"\`) {
		panic(fmt.Sprintf("attribute %s: value %q needs escaping", name, value))
	}
	return fmt.Sprintf(`[%s="%s"]`, name, value)
}
