package signing

import (
	"bytes"
	"testing"
)

// Signing cost per scheme, body size and number of keys (one key normally; two during a
// rotation's grace period).
func BenchmarkSign(b *testing.B) {
	hmac1, _ := newKey(b, HMACSHA256)
	hmac2, _ := newKey(b, HMACSHA256)
	ed1, _ := newKey(b, Ed25519)
	ed2, _ := newKey(b, Ed25519)
	schemes := []struct {
		name   string
		signer Signer
		keys   []Key
	}{
		{"StandardWebhooks-HMAC", Signer{Scheme: StandardWebhooks}, []Key{hmac1, hmac2}},
		{"StandardWebhooks-Ed25519", Signer{Scheme: StandardWebhooks}, []Key{ed1, ed2}},
		{"HMACTimestamp", Signer{Scheme: HMACTimestamp}, []Key{hmac1, hmac2}},
		{"HTTPMessageSignatures", Signer{Scheme: HTTPMessageSignatures}, []Key{ed1, ed2}},
	}
	for _, size := range []int{1 << 10, 64 << 10} {
		body := bytes.Repeat([]byte("a"), size)
		for _, s := range schemes {
			for n := 1; n <= 2; n++ {
				b.Run(s.name+"/"+sizeName(size)+"/keys="+string(rune('0'+n)), func(b *testing.B) {
					r := Request{ID: "msg_bench", Timestamp: 1700000000, Body: body, Method: "POST", TargetURI: "https://example.com/hooks", ContentType: "application/json"}
					b.SetBytes(int64(size))
					b.ReportAllocs()
					for b.Loop() {
						if _, err := s.signer.Sign(r, s.keys[:n]); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

func sizeName(n int) string {
	if n >= 1<<10 {
		return string(rune('0'+n>>10/10%10)) + string(rune('0'+n>>10%10)) + "KiB"
	}
	return "B"
}
