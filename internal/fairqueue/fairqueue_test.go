package fairqueue

import (
	"fmt"
	"sort"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

// served drains what is queued in the order the priority queue serves it: the
// highest priority first, the order of arrival among equals.
type queued struct {
	req      types.NamespacedName
	priority int
	seq      int
}

func serveAll(f *Turns, q []queued) []string {
	sort.SliceStable(q, func(i, j int) bool {
		if q[i].priority != q[j].priority {
			return q[i].priority > q[j].priority
		}
		return q[i].seq < q[j].seq
	})
	var order []string
	for _, e := range q {
		f.Started(e.req)
		order = append(order, e.req.Name)
	}
	return order
}

func req(name string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: name} }

func TestFairTurnsServeTheOtherEndpointAfterABurst(t *testing.T) {
	f := NewTurns()
	var q []queued
	for i := range 100 {
		r := req(fmt.Sprintf("burst-%03d", i))
		q = append(q, queued{r, f.queue(r, "ns/busy"), len(q)})
	}
	q = append(q, queued{req("other"), f.queue(req("other"), "ns/quiet"), len(q)})
	order := serveAll(f, q)
	if order[0] != "burst-000" || order[1] != "other" {
		t.Fatalf("served %v..., want burst-000 then other", order[:3])
	}
	// The burst keeps its own order.
	for i, name := range append(order[:1:1], order[2:]...) {
		if want := fmt.Sprintf("burst-%03d", i); name != want {
			t.Fatalf("burst served out of order at %d: %s, want %s", i, name, want)
		}
	}
}

func TestFairTurnsKeepAQueuedRequestsTurn(t *testing.T) {
	f := NewTurns()
	first := f.queue(req("a"), "ns/e")
	f.queue(req("b"), "ns/e")
	if again := f.queue(req("a"), "ns/e"); again != first {
		t.Fatalf("a queued again got priority %d, want its turn %d", again, first)
	}
}

func TestFairTurnsLateEndpointStartsAtTheCurrentTurn(t *testing.T) {
	f := NewTurns()
	var q []queued
	for i := range 10 {
		r := req(fmt.Sprintf("old-%d", i))
		q = append(q, queued{r, f.queue(r, "ns/old"), len(q)})
	}
	serveAll(f, q[:5]) // five of ten served: the current turn is 5
	late := f.queue(req("late"), "ns/late")
	if want := priorityOf(6); late != want {
		t.Fatalf("a new endpoint's first delivery got priority %d, want the next turn %d (not the first turn, not behind the backlog)", late, want)
	}
	// A request back from a wait takes the current turn without taking its endpoint's.
	if later := f.Later(); later != priorityOf(6) {
		t.Fatalf("later() = %d, want %d", later, priorityOf(6))
	}
	if next := f.queue(req("old-new"), "ns/old"); next != priorityOf(11) {
		t.Fatalf("old's next delivery got %d, want %d: a wait must not push it back", next, priorityOf(11))
	}
}

func TestFairTurnsForgetIdleEndpoints(t *testing.T) {
	f := NewTurns()
	for i := range 2000 {
		r := req(fmt.Sprintf("d-%d", i))
		f.queue(r, fmt.Sprintf("ns/ep-%d", i))
		f.Started(r)
	}
	if n := len(f.last); n > 1024+1 {
		t.Fatalf("%d endpoints remembered after all went idle, want them forgotten", n)
	}
	if len(f.pending) != 0 {
		t.Fatalf("%d requests still pending", len(f.pending))
	}
}
