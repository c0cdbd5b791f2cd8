// Package throttle enforces per-endpoint limits on delivery attempts: a rate with
// evenly spaced attempts (no burst) and a cap on requests in flight, which shrinks
// while the endpoint's attempts time out (like a circuit breaker's half-open state)
// and grows back as it answers again. It never blocks: a caller that may not go now is
// told when to come back, or is woken when a request of its endpoint finishes, so a
// waiting delivery holds no worker.
package throttle

import (
	"sync"
	"time"
)

// Limits of one endpoint; zero means unlimited.
type Limits struct {
	PerSecond   int
	MaxInFlight int
}

// Decision is the answer to Acquire.
type Decision struct {
	// Release must be called when the attempt is over; nil when not admitted.
	Release func()
	// RetryAfter is when to ask again (rate limit); zero with no Release means "you
	// will be woken" (in-flight limit), with a long safety requeue by the caller.
	RetryAfter time.Duration
}

// Admitted reports whether the attempt may go now.
func (d Decision) Admitted() bool { return d.Release != nil }

// Throttle holds the state of every endpoint's limits.
type Throttle struct {
	mu        sync.Mutex
	endpoints map[string]*endpointState
	// wake is called with the key of a caller waiting on an in-flight slot when one
	// frees up.
	wake func(caller string)
}

type endpointState struct {
	nextSlot time.Time            // the next free rate slot
	reserved map[string]time.Time // caller -> the rate slot reserved for it
	inFlight int
	waiting  []string // callers waiting for an in-flight slot, first come first served
	// reduced is the in-flight cap while attempts time out; 0: not reduced.
	reduced int
}

// cap is the in-flight cap now: the configured one, or less while reduced.
func (st *endpointState) cap(lim Limits) int {
	if st.reduced > 0 && (lim.MaxInFlight <= 0 || st.reduced < lim.MaxInFlight) {
		return st.reduced
	}
	return lim.MaxInFlight
}

// New returns a Throttle that calls wake for a caller whose in-flight wait is over.
func New(wake func(caller string)) *Throttle {
	return &Throttle{endpoints: map[string]*endpointState{}, wake: wake}
}

// Acquire asks whether caller (a delivery) may make an attempt to endpoint now.
func (t *Throttle) Acquire(endpoint, caller string, lim Limits, now time.Time) Decision {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.endpoints[endpoint]
	if st == nil {
		if lim.PerSecond <= 0 && lim.MaxInFlight <= 0 {
			return Decision{Release: func() {}}
		}
		st = &endpointState{reserved: map[string]time.Time{}}
		t.endpoints[endpoint] = st
	}
	if limit := st.cap(lim); limit > 0 && st.inFlight >= limit {
		st.enqueue(caller)
		return Decision{}
	}
	if lim.PerSecond > 0 {
		interval := time.Second / time.Duration(lim.PerSecond)
		if slot, ok := st.reserved[caller]; ok {
			if now.Before(slot) {
				return Decision{RetryAfter: slot.Sub(now)}
			}
			delete(st.reserved, caller)
		} else if now.Before(st.nextSlot) {
			// Reserve the next free slot so waiting callers come back one per interval
			// instead of all at once.
			slot := st.nextSlot
			st.nextSlot = slot.Add(interval)
			st.reserved[caller] = slot
			return Decision{RetryAfter: slot.Sub(now)}
		} else {
			st.nextSlot = now.Add(interval)
		}
		st.dropStaleReservations(now)
	}
	st.inFlight++
	st.dequeue(caller)
	var once sync.Once
	return Decision{Release: func() { once.Do(func() { t.release(endpoint) }) }}
}

func (t *Throttle) release(endpoint string) {
	t.mu.Lock()
	st := t.endpoints[endpoint]
	st.inFlight--
	var next string
	if len(st.waiting) > 0 {
		next, st.waiting = st.waiting[0], st.waiting[1:]
	}
	if st.inFlight == 0 && len(st.waiting) == 0 && len(st.reserved) == 0 && st.nextSlot.IsZero() && st.reduced == 0 {
		delete(t.endpoints, endpoint) // nothing to remember (a rate-limited or reduced endpoint keeps its state)
	}
	t.mu.Unlock()
	if next != "" && t.wake != nil {
		t.wake(next)
	}
}

// maxReducedCap ends a reduction of an endpoint without a configured cap.
const maxReducedCap = 1024

// Outcome feeds an attempt's fate back. A timeout halves the endpoint's in-flight cap
// (from the configured cap, or from what is in flight when there is none), down to one
// attempt at a time; an answer (any status) raises it by one, and once it is back at
// the configured cap the endpoint is no longer reduced. It returns the cap now (0:
// the configured one), and what this outcome changed: a step down, the end of a
// reduction, or nothing worth telling a user (a step back up, a timeout at one).
func (t *Throttle) Outcome(endpoint string, timedOut bool, lim Limits) (reducedCap int, change Change) {
	t.mu.Lock()
	st := t.endpoints[endpoint]
	if st == nil {
		if !timedOut {
			t.mu.Unlock()
			return 0, Unchanged
		}
		st = &endpointState{reserved: map[string]time.Time{}}
		t.endpoints[endpoint] = st
	}
	var wake string
	if timedOut {
		from := st.cap(lim)
		if from <= 0 {
			from = max(st.inFlight, 2)
		}
		was := st.reduced
		st.reduced = max(from/2, 1)
		if st.reduced != was {
			change = Reduced
		}
	} else if st.reduced > 0 {
		st.reduced++
		if (lim.MaxInFlight > 0 && st.reduced >= lim.MaxInFlight) || st.reduced > maxReducedCap {
			st.reduced, change = 0, Restored
		}
		// The cap grew: one more waiter may go.
		if limit := st.cap(lim); len(st.waiting) > 0 && (limit <= 0 || st.inFlight < limit) {
			wake, st.waiting = st.waiting[0], st.waiting[1:]
		}
	}
	reducedCap = st.reduced
	t.mu.Unlock()
	if wake != "" && t.wake != nil {
		t.wake(wake)
	}
	return reducedCap, change
}

// Change is what an outcome did to an endpoint's in-flight cap.
type Change int

const (
	Unchanged Change = iota
	Reduced          // a timeout lowered the cap
	Restored         // answers brought it back to the configured cap
)

// Forget drops what is kept about a caller that will not come back (finished or gone).
func (t *Throttle) Forget(endpoint, caller string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st := t.endpoints[endpoint]; st != nil {
		delete(st.reserved, caller)
		st.dequeue(caller)
	}
}

func (st *endpointState) enqueue(caller string) {
	for _, c := range st.waiting {
		if c == caller {
			return
		}
	}
	st.waiting = append(st.waiting, caller)
}

func (st *endpointState) dequeue(caller string) {
	for i, c := range st.waiting {
		if c == caller {
			st.waiting = append(st.waiting[:i], st.waiting[i+1:]...)
			return
		}
	}
}

// dropStaleReservations forgets slots long past: their callers went away.
func (st *endpointState) dropStaleReservations(now time.Time) {
	if len(st.reserved) < 64 {
		return
	}
	for c, slot := range st.reserved {
		if now.Sub(slot) > time.Minute {
			delete(st.reserved, c)
		}
	}
}
