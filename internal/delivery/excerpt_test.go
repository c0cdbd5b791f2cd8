package delivery

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func storedLen(t *testing.T, s string) int {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return len(b) - 2 // the quotes belong to the field, not to the excerpt
}

func TestExcerptIsPrintableAndWithinTheLimitAsStored(t *testing.T) {
	binary := make([]byte, 4096)
	for i := range binary {
		binary[i] = byte(i * 7)
	}
	cases := map[string][]byte{
		"binary":         binary,
		"control bytes":  bytes.Repeat([]byte{0x00, 0x1b, '[', '3', '1', 'm', 0x7f, '\r'}, 300),
		"html":           []byte(strings.Repeat("<p>a&b</p>", 300)),
		"quotes":         []byte(strings.Repeat(`"\`, 1000)),
		"multibyte":      []byte(strings.Repeat("héllo wörld ☃ 𝄞 ", 200)),
		"cut mid-rune":   append(bytes.Repeat([]byte("a"), 1023), 0xe2, 0x98, 0x83),
		"short and fine": []byte("ok\n\tdone"),
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			got := Excerpt(body, MaxResponseBytes)
			if !utf8.ValidString(got) {
				t.Fatalf("not valid UTF-8: %q", got)
			}
			for _, r := range got {
				if unicode.IsControl(r) && r != '\n' && r != '\t' {
					t.Fatalf("control character %U kept", r)
				}
			}
			if n := storedLen(t, got); n > MaxResponseBytes {
				t.Fatalf("stored as %d bytes, limit %d", n, MaxResponseBytes)
			}
			if n := storedLen(t, got); len(body) >= MaxResponseBytes && n < MaxResponseBytes-6 {
				t.Fatalf("a long body should fill the excerpt: %d bytes stored", n)
			}
		})
	}
	if got := Excerpt([]byte("ok\n\tdone"), MaxResponseBytes); got != "ok\n\tdone" {
		t.Fatalf("printable text must be kept as it is: %q", got)
	}
}
