// Package backoff computes when a failed delivery is tried again: the endpoint's
// schedule, ±20% jitter so that receivers are not hit in waves, and Retry-After.
package backoff

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DefaultSchedule is the delay after each failed attempt when the endpoint sets none.
var DefaultSchedule = []time.Duration{
	5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour,
}

// Jitter is the relative spread applied to every delay.
const Jitter = 0.2

// Policy is an endpoint's retry policy.
type Policy struct {
	Schedule    []time.Duration
	MaxAttempts int
}

// NewPolicy fills in the defaults: the default schedule, and len(schedule)+1 attempts.
func NewPolicy(schedule []time.Duration, maxAttempts int) Policy {
	if len(schedule) == 0 {
		schedule = DefaultSchedule
	}
	if maxAttempts <= 0 {
		maxAttempts = len(schedule) + 1
	}
	return Policy{Schedule: schedule, MaxAttempts: maxAttempts}
}

// Exhausted reports whether no attempt is left after `attempts` have been made.
func (p Policy) Exhausted(attempts int) bool { return attempts >= p.MaxAttempts }

// longest is the cap on what a Retry-After may ask for.
func (p Policy) longest() time.Duration {
	var m time.Duration
	for _, d := range p.Schedule {
		m = max(m, d)
	}
	return m
}

// NextDelay is the wait after failed attempt number `attempts` (1-based): the schedule's
// step for it (the last step repeats), jittered by ±20%; a retryAfter the receiver
// asked for stretches the wait, but never beyond the schedule's longest step.
// random returns a value in [0,1); nil means math/rand.
func (p Policy) NextDelay(attempts int, retryAfter time.Duration, random func() float64) time.Duration {
	if random == nil {
		random = rand.Float64
	}
	step := p.Schedule[min(max(attempts, 1), len(p.Schedule))-1]
	d := time.Duration(float64(step) * (1 - Jitter + 2*Jitter*random()))
	if retryAfter > d {
		d = min(retryAfter, p.longest())
	}
	return d
}

// RetryAfter reads a Retry-After header (delay-seconds or an HTTP date) relative to
// now. It returns 0 when the header is absent or unreadable.
func RetryAfter(value string, now time.Time) time.Duration {
	value = strings.TrimSpace(value)
	if value == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(value, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(7*24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(value); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
