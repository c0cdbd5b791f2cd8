package urlkey

import "testing"

func TestNormalize(t *testing.T) {
	same := map[string]string{
		"HTTPS://Example.COM/hooks":          "https://example.com/hooks",
		"https://example.com:443/hooks#frag": "https://example.com/hooks",
		"http://example.com:80/a?b=C":        "http://example.com/a?b=C",
		"https://example.com":                "https://example.com/",
		"https://example.com:8443/X":         "https://example.com:8443/X",
		"https://[::1]:443/x":                "https://[::1]/x",
		"https://[::1]:8443/x":               "https://[::1]:8443/x",
		"https://user:pw@example.com/x":      "https://example.com/x",
	}
	for in, want := range same {
		got, err := Normalize(in)
		if err != nil || got != want {
			t.Errorf("Normalize(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"ftp://example.com", "https://", "::", "example.com/x"} {
		if got, err := Normalize(bad); err == nil {
			t.Errorf("Normalize(%q) = %q, want an error", bad, got)
		}
	}
	if IndexKey("https://a/") == IndexKey("https://b/") || len(IndexKey("x")) != 40 {
		t.Error("IndexKey is not a 40-character digest")
	}
}
