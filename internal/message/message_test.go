package message

import (
	"net/http"
	"testing"
	"time"

	"github.com/hookline/hookline/internal/signing"
)

func TestBodyKeepsThePayloadBytes(t *testing.T) {
	published := time.Date(2026, 11, 24, 10, 0, 0, 0, time.FixedZone("CET", 3600))
	got, err := Body("order.created", published, []byte(`{"b":2,"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"type":"order.created","timestamp":"2026-11-24T09:00:00Z","data":{"b":2,"a":1}}`; string(got) != want {
		t.Fatalf("body %s, want %s", got, want)
	}
	if _, err := Body("order.created", published, []byte(`{"a":`)); err == nil {
		t.Fatal("invalid JSON accepted")
	}
}

func TestBuildSignsWithEveryKey(t *testing.T) {
	current, _ := signing.NewHMACSecret()
	previous, _ := signing.NewHMACSecret()
	var keys []signing.Key
	for _, s := range []string{current, previous} {
		k, err := signing.ParseSecret(s)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	now := time.Unix(1_700_000_000, 0)
	req, signature, err := Build(Attempt{ID: "msg_1", Body: []byte(`{"a":1}`), URL: "https://example.com/hooks",
		Headers: []signing.Header{{Name: "X-Tenant", Value: "acme"}}, Signer: signing.Signer{Scheme: signing.StandardWebhooks},
		Keys: keys, Now: now, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	for _, x := range req.Headers {
		h.Set(x.Name, x.Value)
	}
	if h.Get("X-Tenant") != "acme" || h.Get("webhook-id") != "msg_1" || h.Get("webhook-timestamp") != "1700000000" ||
		h.Get("webhook-signature") != signature || req.Timeout != 5*time.Second {
		t.Fatalf("request %+v, signature %q", req, signature)
	}
	for _, s := range []string{current, previous} {
		k, _ := signing.ParseSecret(s)
		v := signing.Verifier{Keys: []signing.Key{k}, Now: func() time.Time { return now }}
		if err := v.StandardWebhooks(h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature"), req.Body); err != nil {
			t.Fatalf("a key's signature does not verify: %v", err)
		}
	}
}
