package payload

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	deep := func(n int) string { return strings.Repeat(`{"a":`, n-1) + "{}" + strings.Repeat("}", n-1) }
	cases := []struct {
		name, payload, wantErr string
	}{
		{"object", `{"order":1234,"items":[{"sku":"a"}]}`, ""},
		{"at the depth limit", deep(MaxDepth), ""},
		{"one level too deep", deep(MaxDepth + 1), "nested more than 64 levels deep; at most 64 levels"},
		{"hostile depth", deep(9992), "nested more than 64 levels deep"},
		{"at the size limit", `{"s":"` + strings.Repeat("x", MaxBytes-8) + `"}`, ""},
		{"one byte too large", `{"s":"` + strings.Repeat("x", MaxBytes-7) + `"}`, "is 262145 bytes; at most 262144 (256 KiB)"},
		{"array", `[1,2]`, "must be a JSON object"},
		{"empty", ``, "must be a JSON object"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Check([]byte(c.payload))
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("got %v, want an error containing %q", err, c.wantErr)
			}
		})
	}
}
