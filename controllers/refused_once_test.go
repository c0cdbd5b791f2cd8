package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

// refusedOnceLoad is how long the good stream runs beside the invalid events.
const refusedOnceLoad = time.Minute

// Invalid events created while admission is off, then a stream of good events in the
// same namespace for a minute: etcd's own count of writes shows each invalid event
// written exactly once after its create (its refusal), each is reported by one Warning
// Event, a new manager leaves them alone, and etcd's database grows by less than one
// more copy of their payloads. Before the fix, a busy manager refused them again and
// again, each time with a new completionTime, until etcd was full.
func TestInvalidEventsAreRefusedOnceUnderLoad(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := "own-15"
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	recv := newReceiver(t)
	// The manager runs first, as in a cluster where invalid events arrive while it
	// works (its first sync of 12 MiB of them is slow under a loaded -race run).
	stop, err := startManager(ctx, restConfig, testConfig(), namespaceOnly(ns))
	if err != nil {
		t.Fatal(err)
	}
	activeEndpoint(t, newEndpoint(ns, "acme", recv.URL+"/", "order.created"))
	large := `{"blob":"` + strings.Repeat("x", 1<<20) + `"}`
	var invalid []string
	invalidBytes := 0
	for i := range 12 {
		for _, ev := range []*hooklinev1.WebhookEvent{
			newEvent(ns, fmt.Sprintf("large-%d", i), "order.created", large),
			{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("deep-%d", i), Namespace: ns},
				Spec: hooklinev1.WebhookEventSpec{Type: "order.created", Payload: runtime.RawExtension{Raw: nestedPayload(100)}}},
		} {
			if err := k8s.Create(ctx, ev); err != nil {
				t.Fatal(err)
			}
			invalid = append(invalid, ev.Name)
			invalidBytes += len(ev.Spec.Payload.Raw)
		}
	}
	t.Cleanup(func() { // 12 MiB that no other test should carry
		_ = k8s.DeleteAllOf(context.Background(), &hooklinev1.WebhookEvent{}, client.InNamespace(ns))
	})

	// writes fails the test at the first invalid event written more than once after
	// its create; it returns how many were refused (written exactly once).
	prefix := "/registry/hookline.dev/webhookevents/" + ns + "/"
	writes := func() int {
		t.Helper()
		versions, err := etcd.KeyVersions(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		refused := 0
		for _, name := range invalid {
			switch v := versions[name]; {
			case v > 2:
				t.Fatalf("invalid event %s was written %d times after its create; once is its refusal", name, v-1)
			case v == 2:
				refused++
			}
		}
		return refused
	}
	eventually(t, time.Minute, "every invalid event refused", func(context.Context) (bool, string, error) {
		n := writes()
		return n == len(invalid), fmt.Sprintf("%d of %d", n, len(invalid)), nil
	})
	// From here on nothing more of the invalid events may be written.
	inUseBefore, _, err := etcd.DBSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	published := 0
	tick := time.NewTicker(100 * time.Millisecond) // 10 good events a second
	defer tick.Stop()
	for end := time.Now().Add(refusedOnceLoad); time.Now().Before(end); {
		<-tick.C
		if err := k8s.Create(ctx, newEvent(ns, fmt.Sprintf("good-%d", published), "order.created", `{"n":1}`)); err != nil {
			t.Fatal(err)
		}
		published++
		if published%10 == 0 {
			writes()
		}
	}
	eventually(t, time.Minute, "the good stream delivered", func(ctx context.Context) (bool, string, error) {
		return len(recv.got()) >= published, fmt.Sprintf("%d of %d", len(recv.got()), published), nil
	})
	if refused := writes(); refused != len(invalid) {
		t.Fatalf("%d of %d invalid events refused", refused, len(invalid))
	}
	t.Logf("%d good events delivered beside %d invalid ones, each written once after its create", published, len(invalid))

	// One Warning Event each.
	var events eventsv1.EventList
	if err := k8s.List(ctx, &events, inNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	reported := map[string]int{}
	for _, e := range events.Items {
		if e.Reason == hooklinev1.ReasonInvalidPayload {
			n := 1
			if e.Series != nil {
				n = int(e.Series.Count)
			}
			reported[e.Regarding.Name] += n
		}
	}
	for _, name := range invalid {
		if reported[name] != 1 {
			t.Fatalf("invalid event %s was reported %d times, want once (all: %v)", name, reported[name], reported)
		}
	}

	// A new manager recognises them as refused.
	stop()
	stop, err = startManager(ctx, restConfig, testConfig(), namespaceOnly(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	if err := k8s.Create(ctx, newEvent(ns, "after-restart", "order.created", `{"n":2}`)); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ns, "after-restart", time.Minute, "delivered after the restart", completeWith(hooklinev1.ReasonAllSucceeded))
	if refused := writes(); refused != len(invalid) {
		t.Fatalf("%d of %d invalid events still refused once after the restart", refused, len(invalid))
	}

	// The database, from the refusals on: the good stream, but not another copy of the
	// invalid payloads (the API server's compaction can only make this smaller).
	inUseAfter, _, err := etcd.DBSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	growth := inUseAfter - inUseBefore
	t.Logf("etcd in use grew by %.1f MiB under the good stream (invalid payloads: %.1f MiB)", growth/(1<<20), float64(invalidBytes)/(1<<20))
	if growth > float64(invalidBytes) {
		t.Fatalf("etcd in use grew by %.1f MiB under the good stream, more than another copy of the invalid payloads (%.1f MiB)", growth/(1<<20), float64(invalidBytes)/(1<<20))
	}
}
