package delivery

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxResponseBytes is how much of a response body is kept, measured as stored: the
// bytes the excerpt takes once JSON-encoded in the delivery's status.
const MaxResponseBytes = 1024

// Excerpt turns the start of a response body into text that is safe to store and to
// print: invalid UTF-8 and control characters (other than newline and tab) become
// U+FFFD, and the result is cut on a rune boundary so that its JSON encoding, with the
// escapes Kubernetes' encoder writes, is at most limit bytes. Sanitising comes first,
// so a binary body cannot inflate past the limit.
func Excerpt(body []byte, limit int) string {
	var b strings.Builder
	stored := 0
	for len(body) > 0 {
		r, size := utf8.DecodeRune(body)
		body = body[size:]
		if r == utf8.RuneError || (unicode.IsControl(r) && r != '\n' && r != '\t') {
			r = utf8.RuneError
		}
		cost := storedBytes(r)
		if stored+cost > limit {
			break
		}
		stored += cost
		b.WriteRune(r)
	}
	return b.String()
}

// storedBytes is what a rune costs inside a JSON string written by encoding/json
// (which escapes HTML-sensitive characters and the line separators).
func storedBytes(r rune) int {
	switch r {
	case '"', '\\', '\n', '\t':
		return 2
	case '<', '>', '&', '\u2028', '\u2029':
		return 6
	}
	return utf8.RuneLen(r)
}
