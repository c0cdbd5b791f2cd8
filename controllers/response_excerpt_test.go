package controllers

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

// Binary and markup answers are stored sanitised and within 1 KiB as the API server
// stores them, with no control character to break `kubectl get -o yaml`.
func TestResponseExcerptIsSanitisedThenCutAsStored(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	binary := make([]byte, 8192)
	for i := range binary {
		binary[i] = byte(i*31 + 7)
	}
	bodies := map[string][]byte{
		"binary": binary,
		"html":   []byte(strings.Repeat("<div class=\"x\">a & b</div>\r\n", 400)),
	}
	for name, body := range bodies {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(body)
		}))
		t.Cleanup(srv.Close)
		activeEndpoint(t, newEndpoint(ns, name, srv.URL+"/", "order."+name))
		if err := k8s.Create(ctx, newEvent(ns, "e-"+name, "order."+name, `{"n":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	for name := range bodies {
		waitDeliveryPhase(t, ns, deliveryName("e-"+name, name), hooklinev1.PhaseSucceeded, 10*time.Second)
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(hooklinev1.GroupVersion.WithKind("WebhookDelivery"))
		if err := k8s.Get(ctx, key(ns, deliveryName("e-"+name, name)), u); err != nil {
			t.Fatal(err)
		}
		history, _, _ := unstructured.NestedSlice(u.Object, "status", "history")
		if len(history) != 1 {
			t.Fatalf("%s: history %v", name, history)
		}
		response, _ := history[0].(map[string]any)["response"].(string)
		stored, _ := json.Marshal(response)
		if n := len(stored) - 2; n > 1024 || n < 900 {
			t.Fatalf("%s: the excerpt is stored as %d bytes, want at most 1024 and close to it", name, n)
		}
		for _, r := range response {
			if unicode.IsControl(r) && r != '\n' && r != '\t' {
				t.Fatalf("%s: control character %U stored", name, r)
			}
		}
		t.Logf("%s: %d bytes stored", name, len(stored)-2)
	}
}
