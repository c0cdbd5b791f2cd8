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
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/payload"
	"github.com/hookline/hookline/internal/testenv"
)

var (
	k8s        client.Client
	restConfig *rest.Config
)

// budget refuses creates in the namespaces of its refusals map, that many times each
// (-1: always), and counts every question.
var budget = &scriptedBudget{refusals: map[string]int{"budget-full": -1, "budget-retry": 2}, asked: map[string]int{}}

type scriptedBudget struct {
	mu       sync.Mutex
	refusals map[string]int
	asked    map[string]int
}

func (b *scriptedBudget) AdmitCreate(kind, namespace, _ string, payloadBytes int) (bool, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.asked[namespace]++
	n, ok := b.refusals[namespace]
	if !ok || n == 0 {
		return true, ""
	}
	if n > 0 {
		b.refusals[namespace]--
	}
	return false, fmt.Sprintf("namespace %s holds 7.0 MiB, over its fair share of 4.0 MiB (%d bytes asked)", namespace, payloadBytes)
}

// The API server of this suite calls the webhook as config/webhook registers it.
func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	env, err := testenv.StartWith(testenv.Options{Webhooks: true})
	if err != nil {
		return testenv.Without(m, err)
	}
	defer func() { _ = env.Stop() }()
	k8s, restConfig = env.Client, env.Config
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
	mux.Handle(PayloadPath, PayloadHandler{Budget: budget})
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

// While the budget is full for a namespace, a create there is refused with 429 and a
// Retry-After that client-go honours: a producer's client retries by itself and gets
// through once there is room. Nothing refused is stored.
func TestAFullBudgetRefusesCreatesWith429(t *testing.T) {
	testenv.Needs(t)
	ctx := context.Background()
	for _, ns := range []string{"budget-full", "budget-retry"} {
		if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	full := event("refused", `{"order":1}`)
	full.Namespace = "budget-full"
	// One request, without client-go's retries, to see the answer itself.
	cfg := rest.CopyConfig(restConfig)
	cfg.GroupVersion, cfg.APIPath = &hooklinev1.GroupVersion, "/apis"
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(k8s.Scheme()).WithoutConversion()
	once, err := rest.RESTClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = once.Post().Namespace(full.Namespace).Resource("webhookevents").Body(full).MaxRetries(0).Do(ctx).Error()
	if !apierrors.IsTooManyRequests(err) || !strings.Contains(err.Error(), "the etcd budget is full, retry later") ||
		!strings.Contains(err.Error(), "over its fair share") {
		t.Fatalf("a create in a full namespace: %v", err)
	}
	if delay, ok := apierrors.SuggestsClientDelay(err); !ok || delay != int(BudgetRetryAfter.Seconds()) {
		t.Fatalf("retry hint %d (%v), want %v", delay, ok, BudgetRetryAfter)
	}
	if getErr := k8s.Get(ctx, client.ObjectKeyFromObject(full), &hooklinev1.WebhookEvent{}); !apierrors.IsNotFound(getErr) {
		t.Fatalf("a refused event was stored: %v", getErr)
	}
	// Refused twice, then admitted: the client's own retries carry it through.
	retried := event("retried", `{"order":2}`)
	retried.Namespace = "budget-retry"
	if err := k8s.Create(ctx, retried); err != nil {
		t.Fatalf("client-go did not retry the 429s through: %v", err)
	}
	budget.mu.Lock()
	defer budget.mu.Unlock()
	if budget.asked["budget-retry"] != 3 {
		t.Fatalf("the budget was asked %d times, want 3 (two refusals, then admitted)", budget.asked["budget-retry"])
	}
}
