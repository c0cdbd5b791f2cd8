package signing

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The official Standard Webhooks vector (reference library tests).
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorPayload   = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func mustKey(t testing.TB, secret string) Key {
	t.Helper()
	k, err := ParseSecret(secret)
	if err != nil {
		t.Fatalf("ParseSecret: %v", err)
	}
	return k
}

func newKey(t testing.TB, alg Algorithm) (Key, string) {
	t.Helper()
	s, _, err := NewSecret(alg)
	if err != nil {
		t.Fatal(err)
	}
	return mustKey(t, s), s
}

func TestStandardWebhooksOfficialVector(t *testing.T) {
	got, err := SignStandardWebhooks(vectorID, vectorTimestamp, []byte(vectorPayload), []Key{mustKey(t, vectorSecret)})
	if err != nil {
		t.Fatal(err)
	}
	if got != vectorSignature {
		t.Fatalf("signature = %q, want %q", got, vectorSignature)
	}
	v := Verifier{Keys: []Key{mustKey(t, vectorSecret)}, Now: func() time.Time { return time.Unix(vectorTimestamp+10, 0) }}
	if err := v.StandardWebhooks(vectorID, strconv.Itoa(vectorTimestamp), vectorSignature, []byte(vectorPayload)); err != nil {
		t.Fatalf("verify official vector: %v", err)
	}
}

func TestStandardWebhooksSeveralKeysSpaceSeparated(t *testing.T) {
	k1, k2 := mustKey(t, vectorSecret), mustKey(t, "whsec_"+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)))
	got, err := SignStandardWebhooks(vectorID, vectorTimestamp, []byte(vectorPayload), []Key{k1, k2})
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(got, " ")
	if len(parts) != 2 || parts[0] != vectorSignature || !strings.HasPrefix(parts[1], "v1,") {
		t.Fatalf("signature = %q, want the vector then a second v1 entry", got)
	}
	now := func() time.Time { return time.Unix(vectorTimestamp, 0) }
	for _, k := range []Key{k1, k2} {
		if err := (Verifier{Keys: []Key{k}, Now: now}).StandardWebhooks(vectorID, strconv.Itoa(vectorTimestamp), got, []byte(vectorPayload)); err != nil {
			t.Errorf("verify with %v: %v", k, err)
		}
	}
}

func TestStandardWebhooksEd25519(t *testing.T) {
	k, _ := newKey(t, Ed25519)
	body := []byte(`{"a":1}`)
	got, err := SignStandardWebhooks("msg_1", 1700000000, body, []Key{k})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "v1a,") {
		t.Fatalf("signature = %q, want v1a,", got)
	}
	sig, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(got, "v1a,"))
	if !ed25519.Verify(k.PublicKey(), []byte("msg_1.1700000000."+string(body)), sig) {
		t.Fatal("ed25519 signature does not verify over {id}.{timestamp}.{body}")
	}
	v := Verifier{PublicKeys: []ed25519.PublicKey{k.PublicKey()}, Now: func() time.Time { return time.Unix(1700000000, 0) }}
	if err := v.StandardWebhooks("msg_1", "1700000000", got, body); err != nil {
		t.Fatalf("verify: %v", err)
	}
}

func TestHMACTimestampFormat(t *testing.T) {
	k1, s1 := newKey(t, HMACSHA256)
	k2, _ := newKey(t, HMACSHA256)
	got, err := SignHMACTimestamp(1700000000, []byte("{}"), []Key{k1, k2})
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(got, ",")
	if len(parts) != 3 || parts[0] != "t=1700000000" || !strings.HasPrefix(parts[1], "v1=") || !strings.HasPrefix(parts[2], "v1=") {
		t.Fatalf("header = %q, want t=…,v1=…,v1=…", got)
	}
	// The key is the whole secret string, prefix included (Stripe's convention).
	want := fmt.Sprintf("%x", hmacTimestamp(s1, "1700000000", []byte("{}")))
	if parts[1] != "v1="+want {
		t.Fatalf("first v1 = %q, want the current key's %q", parts[1], want)
	}
	if _, err := SignHMACTimestamp(1, nil, []Key{func() Key { k, _ := newKey(t, Ed25519); return k }()}); err == nil {
		t.Fatal("HMACTimestamp accepted an Ed25519 key")
	}
}

func TestRFC9530ContentDigest(t *testing.T) {
	for body, want := range map[string]string{
		`{"hello": "world"}`:       "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
		"{\"hello\": \"world\"}\n": "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:",
	} {
		if got := ContentDigest([]byte(body)); got != want {
			t.Errorf("ContentDigest(%q) = %q, want %q", body, got, want)
		}
	}
}

// RFC 9421 appendix B.2.6: signing a request with ed25519 (test-key-ed25519, B.1.4).
func TestRFC9421AppendixB26(t *testing.T) {
	seed, err := base64.RawURLEncoding.DecodeString("n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU")
	if err != nil {
		t.Fatal(err)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	names := []string{"date", "@method", "@path", "@authority", "content-type", "content-length"}
	values := []string{"Tue, 20 Apr 2021 02:07:55 GMT", "POST", "/foo", "example.com", "application/json", "18"}
	components := make([]component, len(names))
	for i := range names {
		components[i] = component{names[i], values[i]}
	}
	params := signatureParams(names, 1618884473, "test-key-ed25519", "")
	if want := `("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"`; params != want {
		t.Fatalf("params = %s\nwant     %s", params, want)
	}
	wantBase := `"date": Tue, 20 Apr 2021 02:07:55 GMT
"@method": POST
"@path": /foo
"@authority": example.com
"content-type": application/json
"content-length": 18
"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"`
	base := signatureBase(components, params)
	if string(base) != wantBase {
		t.Fatalf("signature base:\n%s\nwant:\n%s", base, wantBase)
	}
	got := base64.StdEncoding.EncodeToString(ed25519.Sign(priv, base))
	if want := "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="; got != want {
		t.Fatalf("signature = %s, want %s", got, want)
	}
	// The parser and re-serialiser reproduce @signature-params from the header text.
	entries, err := parseSFDictionary(`sig-b26=` + params)
	if err != nil || len(entries) != 1 || entries[0].member.serializeInnerList() != params {
		t.Fatalf("round trip of Signature-Input: %v %+v", err, entries)
	}
}

func httpRequestFor(t *testing.T, r Request, hs []Header) HTTPRequest {
	t.Helper()
	h := http.Header{}
	h.Set("Content-Type", r.ContentType)
	h.Set(HeaderWebhookID, r.ID)
	for _, x := range hs {
		h.Set(x.Name, x.Value)
	}
	return HTTPRequest{Method: r.Method, TargetURI: r.TargetURI, Header: h, Body: r.Body}
}

func TestHTTPMessageSignaturesTwoKeys(t *testing.T) {
	current, _ := newKey(t, Ed25519)
	previous, _ := newKey(t, Ed25519)
	r := Request{ID: "msg_1", Timestamp: 1700000000, Body: []byte(`{"type":"a.b"}`), Method: "post", TargetURI: "https://example.com/hooks?x=1", ContentType: "application/json"}
	hs, err := SignHTTPMessage(r, []Key{current, previous})
	if err != nil {
		t.Fatal(err)
	}
	input := hs[1].Value
	wantInput := `sig1=("@method" "@target-uri" "content-type" "content-digest" "webhook-id");created=1700000000;keyid="` + KeyID(current.PublicKey()) + `";alg="ed25519", sig2=`
	if !strings.HasPrefix(input, wantInput) {
		t.Fatalf("Signature-Input = %s\nwant prefix      %s", input, wantInput)
	}
	if !strings.HasPrefix(hs[0].Value, "sig1=:") || !strings.Contains(hs[0].Value, ", sig2=:") {
		t.Fatalf("Signature = %s", hs[0].Value)
	}
	now := func() time.Time { return time.Unix(1700000000, 0) }
	for name, pub := range map[string]ed25519.PublicKey{"current": current.PublicKey(), "previous": previous.PublicKey()} {
		v := Verifier{PublicKeys: []ed25519.PublicKey{pub}, Now: now}
		if err := v.HTTPMessage(httpRequestFor(t, r, hs)); err != nil {
			t.Errorf("%s key: %v", name, err)
		}
	}
	other, _ := newKey(t, Ed25519)
	if err := (Verifier{Keys: []Key{other}, Now: now}).HTTPMessage(httpRequestFor(t, r, hs)); !errors.Is(err, ErrNoMatchingSignature) {
		t.Errorf("unknown key: err = %v, want ErrNoMatchingSignature", err)
	}
	tampered := httpRequestFor(t, r, hs)
	tampered.Body = []byte(`{"type":"a.c"}`)
	if err := (Verifier{Keys: []Key{current}, Now: now}).HTTPMessage(tampered); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("changed body: err = %v, want ErrDigestMismatch", err)
	}
	otherTarget := httpRequestFor(t, r, hs)
	otherTarget.TargetURI = "https://evil.example/hooks?x=1"
	if err := (Verifier{Keys: []Key{current}, Now: now}).HTTPMessage(otherTarget); !errors.Is(err, ErrNoMatchingSignature) {
		t.Errorf("changed target: err = %v, want ErrNoMatchingSignature", err)
	}
}

func TestVerifierRejects(t *testing.T) {
	key, _ := newKey(t, HMACSHA256)
	wrong, _ := newKey(t, HMACSHA256)
	body := []byte(`{"x":1}`)
	const ts = 1700000000
	sig, _ := SignStandardWebhooks("msg_1", ts, body, []Key{key})
	hmacTS, _ := SignHMACTimestamp(ts, body, []Key{key})
	at := func(d time.Duration) func() time.Time { return func() time.Time { return time.Unix(ts, 0).Add(d) } }

	cases := []struct {
		name string
		err  error
		run  func() error
	}{
		{"sw wrong key", ErrNoMatchingSignature, func() error {
			return Verifier{Keys: []Key{wrong}, Now: at(0)}.StandardWebhooks("msg_1", "1700000000", sig, body)
		}},
		{"sw changed body", ErrNoMatchingSignature, func() error {
			return Verifier{Keys: []Key{key}, Now: at(0)}.StandardWebhooks("msg_1", "1700000000", sig, []byte(`{"x":2}`))
		}},
		{"sw changed id", ErrNoMatchingSignature, func() error {
			return Verifier{Keys: []Key{key}, Now: at(0)}.StandardWebhooks("msg_2", "1700000000", sig, body)
		}},
		{"sw old timestamp", ErrTimestamp, func() error {
			return Verifier{Keys: []Key{key}, Now: at(6 * time.Minute)}.StandardWebhooks("msg_1", "1700000000", sig, body)
		}},
		{"sw future timestamp", ErrTimestamp, func() error {
			return Verifier{Keys: []Key{key}, Now: at(-6 * time.Minute)}.StandardWebhooks("msg_1", "1700000000", sig, body)
		}},
		{"sw malformed timestamp", ErrMalformedHeader, func() error {
			return Verifier{Keys: []Key{key}, Now: at(0)}.StandardWebhooks("msg_1", "soon", sig, body)
		}},
		{"sw malformed entry", ErrMalformedHeader, func() error {
			return Verifier{Keys: []Key{key}, Now: at(0)}.StandardWebhooks("msg_1", "1700000000", "garbage", body)
		}},
		{"sw unknown version", ErrUnknownVersion, func() error {
			return Verifier{Keys: []Key{key}, Now: at(0)}.StandardWebhooks("msg_1", "1700000000", strings.Replace(sig, "v1,", "v9,", 1), body)
		}},
		{"stripe wrong key", ErrNoMatchingSignature, func() error {
			return Verifier{Keys: []Key{wrong}, Now: at(0)}.HMACTimestamp(hmacTS, body)
		}},
		{"stripe changed body", ErrNoMatchingSignature, func() error {
			return Verifier{Keys: []Key{key}, Now: at(0)}.HMACTimestamp(hmacTS, []byte("{}"))
		}},
		{"stripe old", ErrTimestamp, func() error {
			return Verifier{Keys: []Key{key}, Now: at(time.Hour)}.HMACTimestamp(hmacTS, body)
		}},
		{"stripe no t", ErrMalformedHeader, func() error {
			return Verifier{Keys: []Key{key}, Now: at(0)}.HMACTimestamp("v1=00", body)
		}},
		{"stripe unknown version", ErrUnknownVersion, func() error {
			return Verifier{Keys: []Key{key}, Now: at(0)}.HMACTimestamp("t=1700000000,v0=abcd", body)
		}},
	}
	for _, c := range cases {
		if err := c.run(); !errors.Is(err, c.err) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.err)
		}
	}
}

func TestParseSecretErrors(t *testing.T) {
	cases := map[string]string{
		"":                   "empty",
		"sk_live_abc":        "must start with",
		"whsec_!!!notbase64": "not valid base64",
		"whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 16)): "at least 24",
		"whsk_" + base64.StdEncoding.EncodeToString(make([]byte, 16)):  "seed is 32 bytes",
	}
	for in, want := range cases {
		_, err := ParseSecret(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseSecret(%q) = %v, want an error containing %q", in, err, want)
		}
		if len(in) > 10 && err != nil && strings.Contains(err.Error(), in[6:]) {
			t.Errorf("error %q contains the secret", err)
		}
	}
	// Unpadded base64, as some tools print it, is accepted.
	if _, err := ParseSecret(strings.TrimRight(vectorSecret, "=")); err != nil {
		t.Errorf("unpadded secret: %v", err)
	}
}

func TestKeyNeverPrintsItsSecret(t *testing.T) {
	k, s := newKey(t, HMACSHA256)
	for _, out := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s", k, k, k, k)} {
		if strings.Contains(out, s[8:]) {
			t.Fatalf("formatted key %q reveals the secret", out)
		}
	}
	if h := Hint(s); h != s[:8]+"..." || k.Hint() != h {
		t.Fatalf("Hint = %q", h)
	}
}

func TestGeneratedSecretsParse(t *testing.T) {
	s, err := NewHMACSecret()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, "whsec_"))
	if !strings.HasPrefix(s, "whsec_") || len(raw) != 32 {
		t.Fatalf("NewHMACSecret = %d bytes", len(raw))
	}
	sk, pk, err := NewEd25519Secret()
	if err != nil {
		t.Fatal(err)
	}
	k := mustKey(t, sk)
	pub, err := ParsePublicKey(pk)
	if err != nil || !pub.Equal(k.PublicKey()) {
		t.Fatalf("public key %v does not match the seed: %v", pk, err)
	}
	if len(KeyID(pub)) != 32 {
		t.Fatalf("KeyID = %q", KeyID(pub))
	}
}

// SchemeOf recognises what each signer makes.
func TestSchemeOfNamesEachSignersOutput(t *testing.T) {
	hmacKey, err := ParseSecret("whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef")))
	if err != nil {
		t.Fatal(err)
	}
	edKey, err := ParseSecret("whsk_" + base64.StdEncoding.EncodeToString(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	sw, _ := SignStandardWebhooks("msg_1", 1, []byte("{}"), []Key{hmacKey})
	ed, _ := SignStandardWebhooks("msg_1", 1, []byte("{}"), []Key{edKey})
	ts, _ := SignHMACTimestamp(1, []byte("{}"), []Key{hmacKey})
	for sig, want := range map[string]string{sw: "StandardWebhooks", ed: "StandardWebhooks/Ed25519", ts: "HMACTimestamp",
		"sig1=:AAAA:": "HTTPMessageSignatures", "": ""} {
		if got := SchemeOf(sig); got != want {
			t.Errorf("SchemeOf(%q) = %q, want %q", sig, got, want)
		}
	}
}
