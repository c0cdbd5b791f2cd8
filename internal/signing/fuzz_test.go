package signing

import (
	"net/http"
	"testing"
	"time"
)

// Parsers of untrusted headers must never panic, whatever they are given.

func FuzzStandardWebhooksHeader(f *testing.F) {
	f.Add("1614265330", vectorSignature)
	f.Add("1614265330", "v1,abc v1a,def v2,==")
	f.Add("-1", ",")
	k := mustKey(f, vectorSecret)
	v := Verifier{Keys: []Key{k}, Now: func() time.Time { return time.Unix(vectorTimestamp, 0) }}
	f.Fuzz(func(t *testing.T, ts, sig string) {
		_ = v.StandardWebhooks(vectorID, ts, sig, []byte(vectorPayload))
	})
}

func FuzzHMACTimestampHeader(f *testing.F) {
	f.Add("t=1614265330,v1=00ff")
	f.Add("t=,v1=,v0=x")
	f.Add(",,,=")
	v := Verifier{Keys: []Key{mustKey(f, vectorSecret)}, Now: func() time.Time { return time.Unix(vectorTimestamp, 0) }}
	f.Fuzz(func(t *testing.T, header string) {
		_ = v.HMACTimestamp(header, []byte(vectorPayload))
	})
}

func FuzzHTTPMessageSignatureHeaders(f *testing.F) {
	f.Add(`sig1=("@method" "@target-uri" "content-type" "content-digest" "webhook-id");created=1700000000;keyid="ab";alg="ed25519"`,
		`sig1=:AAAA:`, `sha-256=:RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o=:`)
	f.Add(`a=(;`, `b=:::`, `sha-256=?1`)
	f.Add(`x="\"", y=?0;z, w=-12;q=tok/en`, `sig1=(1 2)`, ``)
	k, _ := ParseSecret("whsk_" + "n4Ni+HpISpVObnQMW0wOhCKROaIKqKtW/2ZYb2p9KcU=")
	v := Verifier{Keys: []Key{k}, Now: func() time.Time { return time.Unix(1700000000, 0) }}
	f.Fuzz(func(t *testing.T, input, signature, digest string) {
		h := http.Header{}
		h.Set("Signature-Input", input)
		h.Set("Signature", signature)
		h.Set("Content-Digest", digest)
		h.Set("Content-Type", "application/json")
		h.Set("Webhook-Id", "msg_1")
		_ = v.HTTPMessage(HTTPRequest{Method: "POST", TargetURI: "https://example.com/", Header: h, Body: []byte("{}")})
	})
}

func FuzzParseSecret(f *testing.F) {
	f.Add(vectorSecret)
	f.Add("whsk_AAAA")
	f.Add("whpk_")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ParseSecret(s)
		_, _ = ParsePublicKey(s)
	})
}
