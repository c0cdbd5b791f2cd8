package admission

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/payload"
	"github.com/hookline/hookline/internal/testenv"
)

var k8s client.Client

// The API server of this suite calls the webhook as config/webhook registers it.
func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	env, err := testenv.StartWith(testenv.Options{Webhooks: true})
	if err != nil {
		return testenv.Without(m, err)
	}
	defer func() { _ = env.Stop() }()
	k8s = env.Client
	host, port, certDir := env.WebhookServing()
	cert, err := tls.LoadX509KeyPair(filepath.Join(certDir, "tls.crt"), filepath.Join(certDir, "tls.key"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ln, err := tls.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(port)), &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mux := http.NewServeMux()
	mux.Handle(PayloadPath, PayloadHandler{})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	return m.Run()
}

func nested(depth int) string {
	return strings.Repeat(`{"a":`, depth-1) + "{}" + strings.Repeat("}", depth-1)
}

func event(name, data string) *hooklinev1.WebhookEvent {
	return &hooklinev1.WebhookEvent{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec:       hooklinev1.WebhookEventSpec{Type: "order.created", Payload: runtime.RawExtension{Raw: []byte(data)}},
	}
}

func delivery(name, data string) *hooklinev1.WebhookDelivery {
	d := &hooklinev1.WebhookDelivery{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec:       hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: "ep"}, EventType: "order.created"},
	}
	if data == "" {
		d.Spec.EventRef = &hooklinev1.LocalRef{Name: "some-event"}
	} else {
		d.Spec.Payload = &runtime.RawExtension{Raw: []byte(data)}
	}
	return d
}

func TestPayloadLimitsAreEnforcedAtAdmission(t *testing.T) {
	testenv.Needs(t)
	large := `{"s":"` + strings.Repeat("x", payload.MaxBytes) + `"}`
	cases := []struct {
		name    string
		obj     client.Object
		refusal string // empty: accepted
	}{
		{"event at the depth limit", event("at-limit", nested(payload.MaxDepth)), ""},
		{"event one level too deep", event("too-deep", nested(payload.MaxDepth+1)), "spec.payload is nested more than 64 levels deep"},
		// Deep enough that no client could list it once stored.
		{"event nested 9997 levels", event("hostile", nested(9997)), "spec.payload is nested more than 64 levels deep"},
		// The deepest the API server parses at all (one more and it refuses the
		// request itself). The payload is an atomic map, so managedFields do not
		// repeat its nesting and the review still reaches the webhook.
		{"event nested 9998 levels", event("hostile-2", nested(9998)), "spec.payload is nested more than 64 levels deep"},
		{"event too large", event("too-large", large), "spec.payload is 262152 bytes; at most 262144 (256 KiB) are accepted"},
		{"direct delivery too deep", delivery("direct-deep", nested(100)), "WebhookDelivery direct-deep: spec.payload is nested more than 64 levels deep"},
		{"direct delivery too large", delivery("direct-large", large), "at most 262144 (256 KiB)"},
		{"direct delivery within limits", delivery("direct-ok", `{"order":1}`), ""},
		{"fanned-out delivery", delivery("by-ref", ""), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := k8s.Create(context.Background(), c.obj)
			if c.refusal == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			var status apierrors.APIStatus
			if !errors.As(err, &status) || !strings.Contains(err.Error(), c.refusal) || !strings.Contains(err.Error(), `"payload.hookline.dev"`) {
				t.Fatalf("refusal: %v", err)
			}
			if getErr := k8s.Get(context.Background(), client.ObjectKeyFromObject(c.obj), c.obj.DeepCopyObject().(client.Object)); !apierrors.IsNotFound(getErr) {
				t.Fatalf("a refused object must not be stored: %v", getErr)
			}
			t.Logf("%s", err)
		})
	}
}
