package retention

import (
	"sync"
	"sync/atomic"
)

// HoldAt is the share of the budget at which new fan-outs wait. The rest is room for
// what live deliveries still add (attempt history, responses) and for deliveries
// created directly, which the manager cannot hold back.
const HoldAt = 0.90

// Gate admits fan-outs while the bytes kept in etcd leave room for them. The
// estimate is refreshed from the cache by the pruner and grows with every fan-out
// admitted in between, so that a burst cannot overshoot between two counts.
type Gate struct {
	max  int64
	used atomic.Int64

	mu      sync.Mutex
	waiting []string // keys of the held events, oldest first, each once
	held    map[string]bool
}

// NewGate returns a gate for a budget of max bytes; 0 admits everything.
func NewGate(max int64) *Gate {
	return &Gate{max: max, held: map[string]bool{}}
}

// Max is the budget in bytes (0: none).
func (g *Gate) Max() int64 { return g.max }

// Used is the current estimate of the bytes kept.
func (g *Gate) Used() int64 { return g.used.Load() }

// Observe replaces the estimate with a fresh count.
func (g *Gate) Observe(bytes int64) { g.used.Store(bytes) }

// Admit reserves cost bytes for the fan-out of the event key and reports whether it
// may go ahead. A refused event is remembered until Release hands it back.
func (g *Gate) Admit(key string, cost int64) bool {
	if g.max <= 0 {
		return true
	}
	limit := int64(HoldAt * float64(g.max))
	for {
		used := g.used.Load()
		if used+cost > limit {
			g.mu.Lock()
			if !g.held[key] {
				g.held[key] = true
				g.waiting = append(g.waiting, key)
			}
			g.mu.Unlock()
			return false
		}
		if g.used.CompareAndSwap(used, used+cost) {
			g.mu.Lock()
			if g.held[key] {
				delete(g.held, key)
			}
			g.mu.Unlock()
			return true
		}
	}
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
	if g.max <= 0 || float64(g.used.Load()) >= HoldAt*float64(g.max) {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
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
