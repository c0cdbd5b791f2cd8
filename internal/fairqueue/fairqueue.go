// Package fairqueue orders a controller's work queue so that endpoints are served in
// turn, not in arrival order: start-time fair queueing over controller-runtime's
// priority queue.
package fairqueue

import (
	"context"
	"math"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// Turns orders the delivery work queue so that endpoints are served in turn, not
// in arrival order: start-time fair queueing over the controller's priority queue.
// Each queued delivery gets a tag one past the later of its endpoint's last tag and
// the tag being served now, and a higher priority for a smaller tag. A burst of
// thousands of deliveries to one endpoint takes one turn each round, so another
// endpoint's delivery is next, not behind the burst; and as the burst's turns come,
// newer deliveries of other endpoints queue behind them, so nobody starves.
type Turns struct {
	mu      sync.Mutex
	now     int64                          // the tag served last
	last    map[string]int64               // endpoint -> its last tag
	pending map[types.NamespacedName]int64 // queued request -> its tag
}

// NewTurns returns turns with nothing queued.
func NewTurns() *Turns {
	return &Turns{last: map[string]int64{}, pending: map[types.NamespacedName]int64{}}
}

// queue returns the priority of a request joining the queue for endpoint (its key
// "namespace/name"); a request already queued keeps its turn.
func (f *Turns) queue(req types.NamespacedName, endpoint string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if tag, ok := f.pending[req]; ok {
		return priorityOf(tag)
	}
	tag := max(f.now, f.last[endpoint]) + 1
	f.last[endpoint] = tag
	f.pending[req] = tag
	return priorityOf(tag)
}

// Later returns the priority of a request coming back after a wait (a retry, a
// throttled or rate-limited delivery): the current turn, without taking one from its
// endpoint, so that waiting deliveries do not push their endpoint's new ones back and,
// once due, go before what was queued after them.
func (f *Turns) Later() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return priorityOf(f.now + 1)
}

// Started records that a request is being served: its tag becomes the current one.
func (f *Turns) Started(req types.NamespacedName) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if tag, ok := f.pending[req]; ok {
		delete(f.pending, req)
		f.now = max(f.now, tag)
	}
	// Endpoints that fell behind the current tag have nothing queued ahead of it; they
	// are forgotten, and start again from the current tag when they return.
	if len(f.last) > 4*len(f.pending)+1024 {
		for ep, tag := range f.last {
			if tag <= f.now {
				delete(f.last, ep)
			}
		}
	}
}

// priorityOf maps a tag to a queue priority: a smaller tag goes first.
func priorityOf(tag int64) int { return int(-tag) }

// Handler enqueues deliveries with their endpoint's turn, or, with Route, any object
// with the turn Route names.
type Handler struct {
	Turns *Turns
	// EndpointOf finds the endpoint of a delivery known by name only (a wakeup).
	EndpointOf func(ctx context.Context, req types.NamespacedName) string
	// Route, when set, names the request an object enqueues and whose turn it takes
	// (the event controller: an event, or a delivery's owner event, in its
	// namespace's turn); ok false enqueues nothing. A request routed with an empty
	// turn is bookkeeping: it waits behind every turn (Bookkeeping).
	Route func(obj client.Object) (req types.NamespacedName, turn string, ok bool)
}

// Bookkeeping is the priority of work that waits behind every turn: an event's counts
// as its deliveries change wait behind the fan-out of new events.
const Bookkeeping = math.MinInt32

func (h Handler) add(ctx context.Context, obj client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	req := types.NamespacedName{Namespace: obj.GetNamespace(), Name: obj.GetName()}
	endpoint := ""
	if h.Route != nil {
		var ok bool
		if req, endpoint, ok = h.Route(obj); !ok {
			return
		}
	} else if d, ok := obj.(*hooklinev1.WebhookDelivery); ok && d.Spec.EndpointRef.Name != "" {
		endpoint = d.Namespace + "/" + d.Spec.EndpointRef.Name
	} else if h.EndpointOf != nil {
		endpoint = h.EndpointOf(ctx, req)
	}
	priority := Bookkeeping
	if h.Route == nil || endpoint != "" {
		priority = h.Turns.queue(req, endpoint)
	}
	if pq, ok := q.(priorityqueue.PriorityQueue[reconcile.Request]); ok {
		pq.AddWithOpts(priorityqueue.AddOpts{Priority: &priority}, reconcile.Request{NamespacedName: req})
		return
	}
	q.Add(reconcile.Request{NamespacedName: req})
}

func (h Handler) Create(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.add(ctx, e.Object, q)
}

func (h Handler) Update(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.add(ctx, e.ObjectNew, q)
}

func (h Handler) Delete(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.add(ctx, e.Object, q)
}

func (h Handler) Generic(ctx context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	h.add(ctx, e.Object, q)
}

var _ handler.EventHandler = Handler{}
