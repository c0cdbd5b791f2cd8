// Package throttle enforces per-endpoint limits on delivery attempts: a rate with
// evenly spaced attempts (no burst) and a cap on requests in flight. It never blocks:
// a caller that may not go now is told when to come back, or is woken when a request
// of its endpoint finishes, so a waiting delivery holds no worker.
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
}

// New returns a Throttle that calls wake for a caller whose in-flight wait is over.
func New(wake func(caller string)) *Throttle {
	return &Throttle{endpoints: map[string]*endpointState{}, wake: wake}
}

// Acquire asks whether caller (a delivery) may make an attempt to endpoint now.
func (t *Throttle) Acquire(endpoint, caller string, lim Limits, now time.Time) Decision {
	if lim.PerSecond <= 0 && lim.MaxInFlight <= 0 {
		return Decision{Release: func() {}}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.endpoints[endpoint]
	if st == nil {
		st = &endpointState{reserved: map[string]time.Time{}}
		t.endpoints[endpoint] = st
	}
	if lim.MaxInFlight > 0 && st.inFlight >= lim.MaxInFlight {
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
	if st.inFlight == 0 && len(st.waiting) == 0 && len(st.reserved) == 0 && st.nextSlot.IsZero() {
		delete(t.endpoints, endpoint) // nothing to remember (a rate-limited endpoint keeps its next slot)
	}
	t.mu.Unlock()
	if next != "" && t.wake != nil {
		t.wake(next)
	}
}

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
