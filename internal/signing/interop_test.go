package signing

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stripe/stripe-go/v84/webhook"
	svix "github.com/svix/svix-webhooks/go"
)

// What we sign must be accepted by the verifiers receivers already use, for one key and
// for two (during a rotation's grace period each key alone must verify).
func TestIndependentVerifiersAcceptOurSignatures(t *testing.T) {
	_, current := newKey(t, HMACSHA256)
	_, previous := newKey(t, HMACSHA256)
	body := []byte(`{"type":"order.created","timestamp":"2026-11-23T10:00:00Z","data":{"order":1234}}`)
	now := time.Now().Unix()

	for _, keySet := range [][]string{{current}, {current, previous}} {
		keys := make([]Key, len(keySet))
		for i, s := range keySet {
			keys[i] = mustKey(t, s)
		}
		sw, err := SignStandardWebhooks("msg_interop", now, body, keys)
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{}
		h.Set("webhook-id", "msg_interop")
		h.Set("webhook-timestamp", strconv.FormatInt(now, 10))
		h.Set("webhook-signature", sw)
		stripeHeader, err := SignHMACTimestamp(now, body, keys)
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range keySet {
			ref, err := standardwebhooks.NewWebhook(secret)
			if err != nil {
				t.Fatal(err)
			}
			if err := ref.Verify(body, h); err != nil {
				t.Errorf("Standard Webhooks reference library, %d key(s): %v", len(keySet), err)
			}
			sv, err := svix.NewWebhook(secret)
			if err != nil {
				t.Fatal(err)
			}
			if err := sv.Verify(body, h); err != nil {
				t.Errorf("svix library, %d key(s): %v", len(keySet), err)
			}
			if err := webhook.ValidatePayload(body, stripeHeader, secret); err != nil {
				t.Errorf("stripe-go ValidatePayload, %d key(s): %v", len(keySet), err)
			}
			// ConstructEvent runs this same check and then insists the body is a Stripe
			// event object ("object":"event"), which a hookline body is not.
			if err := webhook.ValidatePayloadWithTolerance(body, stripeHeader, secret, 5*time.Minute); err != nil {
				t.Errorf("stripe-go ValidatePayloadWithTolerance, %d key(s): %v", len(keySet), err)
			}
		}
	}
}
