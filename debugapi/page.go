package debugapi

import (
	"embed"
	"net/http"
	"path"
)

// pageFiles is the live page: index.html, which loads app.js and style.css.
//
//go:embed page/index.html page/app.js page/style.css
var pageFiles embed.FS

// assetTypes are the page's static assets and their content types. They are
// the same bytes in every build and carry no node data, so they are served
// without the token: the browser fetches them from the page's <script> and
// <link> elements, which cannot send it (the page's own URL, its fetches
// and everything else require it).
var assetTypes = map[string]string{
	"app.js":    "text/javascript; charset=utf-8",
	"style.css": "text/css; charset=utf-8",
}

// pagePolicy is the page's Content-Security-Policy: its own script and
// style sheet, its own API, nothing inline, nothing from elsewhere.
const pagePolicy = "default-src 'self'"

// assetIsPublic reports whether urlPath is one of the page's static assets.
func assetIsPublic(urlPath string) bool {
	dir, file := path.Split(urlPath)
	_, ok := assetTypes[file]
	return ok && dir == "/page/"
}

// servePage serves index.html.
func servePage(w http.ResponseWriter, r *http.Request) {
	servePageFile(w, "index.html", "text/html; charset=utf-8")
}

// serveAsset serves /page/{file}: app.js or style.css.
func serveAsset(w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")
	contentType, ok := assetTypes[file]
	if !ok {
		http.NotFound(w, r)
		return
	}
	servePageFile(w, file, contentType)
}

// servePageFile writes the embedded page/name.
func servePageFile(w http.ResponseWriter, name, contentType string) {
	body, err := pageFiles.ReadFile("page/" + name)
	if err != nil { // the files are embedded: only a build without them gets here
		http.Error(w, "page file "+name+" is missing from the build: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Security-Policy", pagePolicy)
	h.Set("X-Frame-Options", "DENY")
	_, _ = w.Write(body)
}
