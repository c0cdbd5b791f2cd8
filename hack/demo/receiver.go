package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/hookline/hookline/internal/signing"
)

// verdict is what the sample receiver concluded about one request.
type verdict struct {
	ID     string
	Type   string
	Status int
	Result string
}

// sampleReceiver verifies Standard Webhooks signatures the way a customer's receiver
// would, and answers 503 to the first request of the types in failOnce, to show a retry.
type sampleReceiver struct {
	mu       sync.Mutex
	verifier *signing.Verifier
	failOnce map[string]bool
	verdicts []verdict
}

func (rc *sampleReceiver) setSecret(secret string) error {
	key, err := signing.ParseSecret(secret)
	if err != nil {
		return err
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.verifier = &signing.Verifier{Keys: []signing.Key{key}}
	return nil
}

func (rc *sampleReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "read body", http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	v := verdict{ID: r.Header.Get("webhook-id"), Type: eventType(body)}
	switch {
	case rc.verifier == nil:
		v.Status, v.Result = http.StatusServiceUnavailable, "no secret yet"
	default:
		if err := rc.verifier.StandardWebhooks(v.ID, r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), body); err != nil {
			v.Status, v.Result = http.StatusUnauthorized, "REJECTED: "+err.Error()
		} else if rc.failOnce[v.Type] {
			rc.failOnce[v.Type] = false
			v.Status, v.Result = http.StatusServiceUnavailable, "signature valid; answering 503 once to show a retry"
		} else {
			v.Status, v.Result = http.StatusOK, "signature valid"
		}
	}
	rc.verdicts = append(rc.verdicts, v)
	w.WriteHeader(v.Status)
	_, _ = fmt.Fprintln(w, v.Result)
}

func (rc *sampleReceiver) snapshot() []verdict {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]verdict(nil), rc.verdicts...)
}

// eventType reads "type" from a hookline body.
func eventType(body []byte) string {
	var b struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(body, &b)
	return b.Type
}
