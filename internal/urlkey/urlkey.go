// Package urlkey normalises endpoint URLs so that two spellings of one receiver are
// recognised as the same endpoint (ensure by URL).
package urlkey

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Normalize lower-cases the scheme and host, drops the default port and the fragment,
// and keeps path and query as written (they are case-sensitive on most servers).
func Normalize(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return "", fmt.Errorf("url: %w", err)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", fmt.Errorf("url: scheme must be http or https, not %q", u.Scheme)
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return "", fmt.Errorf("url: no host")
	}
	port := u.Port()
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		port = ""
	}
	if strings.Contains(host, ":") { // IPv6 literal
		host = "[" + host + "]"
	}
	if port != "" {
		host = net.JoinHostPort(strings.Trim(host, "[]"), port)
	}
	u.Scheme, u.Host, u.Fragment, u.RawFragment = scheme, host, "", ""
	u.User = nil
	if u.Path == "" {
		u.Path = "/"
	}
	return u.String(), nil
}

// IndexKey is a short, label- and index-safe key of a normalised URL.
func IndexKey(normalized string) string {
	sum := sha256.Sum256([]byte(normalized))
	return hex.EncodeToString(sum[:20])
}

// Holder is an endpoint holding a URL, as the ownership rule sees it.
type Holder struct {
	Name    string
	Created time.Time
}

// OwnsBefore reports whether a owns a URL that b holds too: the oldest endpoint owns
// it, then the smaller name. The controller and kubectl-hookline both decide by it.
func OwnsBefore(a, b Holder) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	return a.Name < b.Name
}
