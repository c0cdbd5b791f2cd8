package jsondepth

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// nested is {"a":{"a":…{}…}} with n objects.
func nested(n int) string {
	return strings.Repeat(`{"a":`, n-1) + "{}" + strings.Repeat("}", n-1)
}

func TestDepth(t *testing.T) {
	cases := []struct {
		in   string
		want int
	}{
		{`1`, 0},
		{`"{[{["`, 0},
		{`{}`, 1},
		{`[[],[[]]]`, 3},
		{`{"a":"\"{{{","b":[{"c":"\\"}]}`, 3},
		{nested(64), 64},
		{nested(20000), 20000},
	}
	for _, c := range cases {
		if got := Depth([]byte(c.in)); got != c.want {
			t.Errorf("Depth(%.40q) = %d, want %d", c.in, got, c.want)
		}
	}
}

func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCappedPassesShallowDocumentsUnchanged(t *testing.T) {
	in := `{"type":"ADDED","object":{"s":"]]}}\"[[","n":[1,[2,[3]]]}}` + "\n" + `{"type":"BOOKMARK","object":{}}` + "\n"
	for name, r := range map[string]io.Reader{
		"whole":       Capped(strings.NewReader(in), 10),
		"byte a time": Capped(iotest.OneByteReader(strings.NewReader(in)), 10),
	} {
		if got := readAll(t, r); got != in {
			t.Errorf("%s: got %q", name, got)
		}
	}
}

func TestCappedReplacesWhatIsTooDeepAndStaysDecodable(t *testing.T) {
	deep := `{"type":"ADDED","object":{"metadata":{"name":"x"},"spec":{"payload":` + nested(20000) + `,"type":"t"}}}`
	stream := deep + "\n" + `{"type":"DELETED","object":{"metadata":{"name":"y"}}}` + "\n"
	for name, src := range map[string]io.Reader{
		"whole":       strings.NewReader(stream),
		"byte a time": iotest.OneByteReader(strings.NewReader(stream)),
		"half errors": iotest.HalfReader(strings.NewReader(stream)),
	} {
		out := readAll(t, Capped(src, 100))
		dec := json.NewDecoder(strings.NewReader(out))
		var first, second struct {
			Type   string
			Object struct {
				Metadata struct{ Name string }
				Spec     struct {
					Payload json.RawMessage
					Type    string
				}
			}
		}
		if err := dec.Decode(&first); err != nil {
			t.Fatalf("%s: the capped stream does not decode: %v", name, err)
		}
		if err := dec.Decode(&second); err != nil {
			t.Fatalf("%s: the second document was lost: %v", name, err)
		}
		if first.Object.Metadata.Name != "x" || first.Object.Spec.Type != "t" || second.Object.Metadata.Name != "y" {
			t.Fatalf("%s: fields around the capped value were lost: %+v %+v", name, first, second)
		}
		if d := Depth(first.Object.Spec.Payload); d != 100-3 || !bytes.Contains(first.Object.Spec.Payload, []byte("null")) {
			t.Fatalf("%s: capped payload depth %d", name, d)
		}
	}
}

func BenchmarkCappedPassThrough(b *testing.B) {
	doc := []byte(strings.Repeat(`{"metadata":{"name":"a","labels":{"x":"y"}},"spec":{"payload":{"order":1234,"items":[1,2,3]}}},`, 1000))
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		_, _ = io.Copy(io.Discard, Capped(bytes.NewReader(doc), 1000))
	}
}
