package retention

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// The shares of the budget at which the gate holds work back. Creates stop first, so
// that the events already admitted have room to fan out; fan-outs stop below the
// whole budget, leaving room for what live deliveries still add and for the time a
// count takes. A namespace under its fair share goes on to the next level.
const (
	// AdmitAt: above it, a new WebhookEvent (or direct WebhookDelivery) is refused at
	// admission, unless its namespace is under its share while others hold the rest
	// (then up to the whole budget).
	AdmitAt = 0.80
	// HoldAt: above it, a fan-out waits, unless its namespace is under its share while
	// others hold the rest (then up to the whole budget).
	HoldAt = 0.90
)

// Gate admits creates and fan-outs while hookline's bytes in etcd leave room for them,
// and shares the budget fairly among namespaces: when it is full, the namespaces that
// hold more than an equal share of it are the ones held back. The estimate is
// refreshed from the cache on every walk; what was admitted since, or shortly before
// (the cache may not show it yet), is added to it, so that a burst cannot overshoot
// between two counts.
type Gate struct {
	max int64
	now func() time.Time

	mu       sync.Mutex
	observed int64
	// unfanned is the part of observed that events not fanned out take; a fan-out
	// counts it only up to AdmitAt, so that events admitted while the admission
	// webhook was off cannot keep every fan-out waiting.
	unfanned    int64
	byNamespace map[string]int64
	// seen are the events the last count saw.
	seen     map[string]bool
	reserved []reservation
	// waiting holds the held events' keys by namespace, oldest first; held, their
	// costs.
	waiting map[string][]string
	held    map[string]int64
}

type reservation struct {
	at        time.Time
	namespace string
	cost      int64
	// event is the WebhookEvent ("namespace/name") the bytes are for, if any: created
	// (creates) or fanned out (fan-outs). A count that shows it so has them.
	event  string
	fanOut bool
}

// ReservationGrace is how long what was admitted is counted on top of a count taken
// after it, when nothing names it: the time the cache may take to show it.
const ReservationGrace = time.Second

// ReservationTimeout bounds how long a named reservation (an event's create or
// fan-out) waits for a count to show it. Under load the cache lags by more than
// ReservationGrace, and dropping a reservation before the count has it let a burst
// past the budget; one that never shows (a create that failed after admission, an
// event deleted at once) goes after this.
const ReservationTimeout = 30 * time.Second

// NewGate returns a gate for a budget of max bytes; 0 admits everything.
func NewGate(max int64) *Gate {
	return &Gate{max: max, now: time.Now, held: map[string]int64{}, waiting: map[string][]string{}, byNamespace: map[string]int64{}}
}

// Max is the budget in bytes (0: none).
func (g *Gate) Max() int64 { return g.max }

// Used is the current estimate of the bytes kept.
func (g *Gate) Used() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.used()
}

func (g *Gate) used() int64 {
	n := g.observed
	for _, r := range g.reserved {
		n += r.cost
	}
	return n
}

func (g *Gate) usedBy(namespace string) int64 {
	n := g.byNamespace[namespace]
	for _, r := range g.reserved {
		if r.namespace == namespace {
			n += r.cost
		}
	}
	return n
}

// share is an equal share of the budget among the namespaces that hold bytes or
// were admitted some since the last count, the asking one included.
func (g *Gate) share(namespace string) (int64, int) {
	seen := map[string]bool{namespace: true}
	for ns := range g.byNamespace {
		seen[ns] = true
	}
	for _, r := range g.reserved {
		seen[r.namespace] = true
	}
	return g.max / int64(len(seen)), len(seen)
}

// Count is one count of the cache: all the bytes, the part events not fanned out
// take, the bytes by namespace, and the events seen ("namespace/name": whether
// fanned out).
type Count struct {
	Bytes, Unfanned int64
	ByNamespace     map[string]int64
	Events          map[string]bool
}

// Observe replaces the estimate with a count read from the cache at takenAt. What was
// admitted before it is dropped once the count shows it, or after ReservationGrace
// (ReservationTimeout when it names an event).
func (g *Gate) Observe(c Count, takenAt time.Time) {
	bytes, unfanned, byNamespace := c.Bytes, c.Unfanned, c.ByNamespace
	g.mu.Lock()
	defer g.mu.Unlock()
	g.observed, g.unfanned, g.seen = bytes, unfanned, c.Events
	g.byNamespace = map[string]int64{}
	for ns, n := range byNamespace {
		if n > 0 {
			g.byNamespace[ns] = n
		}
	}
	keep := g.reserved[:0]
	for _, r := range g.reserved {
		fannedOut, seen := c.Events[r.event]
		counted := r.event != "" && r.at.Before(takenAt) && seen && (fannedOut || !r.fanOut)
		wait := ReservationGrace
		if r.event != "" {
			wait = ReservationTimeout
		}
		if !counted && r.at.After(takenAt.Add(-wait)) {
			keep = append(keep, r)
		}
	}
	g.reserved = keep
}

// Decision is the gate's answer, with what a message needs to explain a refusal.
type Decision struct {
	Admitted bool
	// Used and Max are the budget's estimate and size; Namespace holds
	// NamespaceUsed, over its Share of the budget among Namespaces.
	Used, Max, NamespaceUsed, Share int64
	Namespace                       string
	Namespaces                      int
}

// Explain says why work of the namespace waits, for a condition or a refusal.
func (d Decision) Explain() string {
	msg := fmt.Sprintf("hookline's objects take %s of its %s etcd budget (--max-etcd-bytes)", MiB(d.Used), MiB(d.Max))
	if d.Namespaces > 1 && d.NamespaceUsed > d.Share {
		msg += fmt.Sprintf("; namespace %s holds %s, over its fair share of %s (the budget shared by %d namespaces)",
			d.Namespace, MiB(d.NamespaceUsed), MiB(d.Share), d.Namespaces)
	}
	return msg
}

// MiB formats bytes for a message.
func MiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// decide admits cost bytes of the namespace below level of the budget, or, for a
// namespace under its share, below next; it reserves them when it admits.
func (g *Gate) decide(namespace string, cost int64, level, next float64, event string, fanOut bool) Decision {
	used, nsUsed := g.used(), g.usedBy(namespace)
	share, namespaces := g.share(namespace)
	d := Decision{Used: used, Max: g.max, Namespace: namespace, NamespaceUsed: nsUsed, Share: share, Namespaces: namespaces}
	fits := func(limit float64) bool { return float64(used+cost) <= limit*float64(g.max) }
	// A namespace under its share goes on when others hold the rest: alone, a
	// namespace stops at the level, which leaves room for the next one to come.
	if fits(level) || (namespaces > 1 && nsUsed+cost <= share && fits(next)) {
		d.Admitted = true
		g.reserved = append(g.reserved, reservation{at: g.now(), namespace: namespace, cost: cost, event: event, fanOut: fanOut})
	}
	return d
}

// AdmitCreate decides on a new object of cost bytes in the namespace, at admission:
// refused, its producer is told to retry. event names it when it is a WebhookEvent.
func (g *Gate) AdmitCreate(namespace, event string, cost int64) Decision {
	if g.max <= 0 {
		return Decision{Admitted: true}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if event != "" {
		event = namespace + "/" + event
	}
	return g.decide(namespace, cost, AdmitAt, 1, event, false)
}

// Admit decides on the fan-out of the event key ("namespace/name"), which adds cost
// bytes, and the event's own eventBytes unless they are counted already (the last
// count saw the event, or its create was admitted since). A held event is remembered
// until Release hands it back.
func (g *Gate) Admit(key string, eventBytes, cost int64) Decision {
	if g.max <= 0 {
		return Decision{Admitted: true}
	}
	namespace, _, _ := strings.Cut(key, "/")
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.counted(key) {
		cost += eventBytes
	}
	// Events not fanned out count only up to AdmitAt here (see unfanned).
	discount := max(g.unfanned-int64(AdmitAt*float64(g.max)), 0)
	g.observed -= discount
	d := g.decide(namespace, cost, HoldAt, 1, key, true)
	g.observed += discount
	if d.Admitted {
		delete(g.held, key)
		return d
	}
	if _, ok := g.held[key]; !ok {
		g.waiting[namespace] = append(g.waiting[namespace], key)
	}
	g.held[key] = cost
	return d
}

// counted reports whether the event's own bytes are in the estimate.
func (g *Gate) counted(key string) bool {
	if _, seen := g.seen[key]; seen {
		return true
	}
	for _, r := range g.reserved {
		if r.event == key && !r.fanOut {
			return true
		}
	}
	return false
}

// Holding is the number of events waiting for room.
func (g *Gate) Holding() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.held)
}

// Release returns held events to ask again, and forgets them: all of them when the
// estimate leaves room below HoldAt, otherwise those of the namespaces under their
// share that now fit. Namespaces take turns, each oldest first.
func (g *Gate) Release() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.max <= 0 {
		return nil
	}
	room := float64(g.used()) < HoldAt*float64(g.max)
	namespaces := make([]string, 0, len(g.waiting))
	for ns := range g.waiting {
		namespaces = append(namespaces, ns)
	}
	sort.Strings(namespaces)
	used, byNamespace := g.used(), map[string]int64{}
	for _, ns := range namespaces {
		byNamespace[ns] = g.usedBy(ns)
	}
	var out []string
	for turn := 0; ; turn++ {
		added := false
		for _, ns := range namespaces {
			keys := g.waiting[ns]
			if turn >= len(keys) {
				continue
			}
			added = true
			cost, held := g.held[keys[turn]]
			if !held {
				continue
			}
			share, _ := g.share(ns)
			if !room && (byNamespace[ns]+cost > share || used+cost > g.max) {
				continue
			}
			used += cost
			byNamespace[ns] += cost
			out = append(out, keys[turn])
			delete(g.held, keys[turn])
		}
		if !added {
			break
		}
	}
	for _, ns := range namespaces {
		keep := g.waiting[ns][:0]
		for _, k := range g.waiting[ns] {
			if _, held := g.held[k]; held {
				keep = append(keep, k)
			}
		}
		if g.waiting[ns] = keep; len(keep) == 0 {
			delete(g.waiting, ns)
		}
	}
	return out
}

// Forget drops a held event that no longer needs room (deleted, or fanned out).
func (g *Gate) Forget(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.held, key)
}
