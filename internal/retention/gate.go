package retention

import (
	"sync"
	"time"
)

// HoldAt is the share of the budget at which new fan-outs wait. The rest is room for
// what live deliveries still add (attempt history, responses) and for deliveries
// created directly, which the manager cannot hold back.
const HoldAt = 0.90

// Gate admits fan-outs while the bytes kept in etcd leave room for them. The
// estimate is refreshed from the cache by the pruner; what was admitted since, or
// shortly before (the cache may not show it yet), is added to it, so that a burst
// cannot overshoot between two counts.
type Gate struct {
	max int64
	now func() time.Time

	mu       sync.Mutex
	observed int64
	reserved []reservation
	waiting  []string // keys of the held events, oldest first
	held     map[string]bool
}

type reservation struct {
	at   time.Time
	cost int64
}

// ReservationGrace is how long an admitted fan-out is counted on top of a count
// taken after it: the time the cache may take to show its deliveries.
const ReservationGrace = time.Second

// NewGate returns a gate for a budget of max bytes; 0 admits everything.
func NewGate(max int64) *Gate {
	return &Gate{max: max, now: time.Now, held: map[string]bool{}}
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

// Observe replaces the estimate with a count read from the cache at takenAt.
func (g *Gate) Observe(bytes int64, takenAt time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.observed = bytes
	keep := g.reserved[:0]
	for _, r := range g.reserved {
		if r.at.After(takenAt.Add(-ReservationGrace)) {
			keep = append(keep, r)
		}
	}
	g.reserved = keep
}

// Admit reserves cost bytes for the fan-out of the event key and reports whether it
// may go ahead. A refused event is remembered until Release hands it back.
func (g *Gate) Admit(key string, cost int64) bool {
	if g.max <= 0 {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if float64(g.used()+cost) > HoldAt*float64(g.max) {
		if !g.held[key] {
			g.held[key] = true
			g.waiting = append(g.waiting, key)
		}
		return false
	}
	g.reserved = append(g.reserved, reservation{at: g.now(), cost: cost})
	delete(g.held, key)
	return true
}

// Holding is the number of events waiting for room.
func (g *Gate) Holding() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.held)
}

// Release returns the held events, oldest first, when the estimate leaves room below
// HoldAt, and forgets them: each is reconciled again and asks once more.
func (g *Gate) Release() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.max <= 0 || float64(g.used()) >= HoldAt*float64(g.max) {
		return nil
	}
	var out []string
	for _, k := range g.waiting {
		if g.held[k] {
			out = append(out, k)
			delete(g.held, k)
		}
	}
	g.waiting = g.waiting[:0]
	return out
}

// Forget drops a held event that no longer needs room (deleted, or fanned out).
func (g *Gate) Forget(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.held, key)
}
