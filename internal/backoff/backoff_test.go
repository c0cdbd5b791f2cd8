package backoff

import (
	"net/http"
	"testing"
	"time"
)

func TestNextDelayFollowsScheduleWithJitter(t *testing.T) {
	p := NewPolicy(nil, 0)
	if p.MaxAttempts != len(DefaultSchedule)+1 {
		t.Fatalf("MaxAttempts = %d", p.MaxAttempts)
	}
	low, mid, high := func() float64 { return 0 }, func() float64 { return 0.5 }, func() float64 { return 0.999999 }
	for i, step := range DefaultSchedule {
		n := i + 1
		if got := p.NextDelay(n, 0, mid); got != step {
			t.Errorf("attempt %d, no jitter: %v, want %v", n, got, step)
		}
		if got := p.NextDelay(n, 0, low); got != time.Duration(float64(step)*0.8) {
			t.Errorf("attempt %d, low jitter: %v", n, got)
		}
		if got := p.NextDelay(n, 0, high); got < time.Duration(float64(step)*1.19) || got > time.Duration(float64(step)*1.2) {
			t.Errorf("attempt %d, high jitter: %v", n, got)
		}
	}
	// The last step repeats.
	if got := p.NextDelay(40, 0, mid); got != 10*time.Hour {
		t.Errorf("beyond the schedule: %v", got)
	}
}

func TestRetryAfterStretchesButIsCapped(t *testing.T) {
	p := NewPolicy([]time.Duration{time.Second, time.Minute}, 5)
	mid := func() float64 { return 0.5 }
	if got := p.NextDelay(1, 30*time.Second, mid); got != 30*time.Second {
		t.Errorf("Retry-After 30s: %v", got)
	}
	if got := p.NextDelay(1, time.Hour, mid); got != time.Minute {
		t.Errorf("Retry-After beyond the longest step: %v, want 1m", got)
	}
	if got := p.NextDelay(2, time.Second, mid); got != time.Minute {
		t.Errorf("Retry-After shorter than the step: %v, want 1m", got)
	}
	if !p.Exhausted(5) || p.Exhausted(4) {
		t.Error("Exhausted")
	}
}

func TestRetryAfterHeader(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	cases := map[string]time.Duration{
		"":     0,
		"120":  2 * time.Minute,
		"-5":   0,
		"soon": 0,
		now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):       0,
	}
	for in, want := range cases {
		if got := RetryAfter(in, now); got != want {
			t.Errorf("RetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}
