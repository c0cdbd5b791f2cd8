package throttle

import (
	"fmt"
	"testing"
	"time"
)

func TestRateIsEvenlySpacedWithoutBurst(t *testing.T) {
	th := New(nil)
	lim := Limits{PerSecond: 10}
	now := time.Unix(1000, 0)
	d := th.Acquire("ep", "a", lim, now)
	if !d.Admitted() {
		t.Fatal("first attempt refused")
	}
	d.Release()
	// Four more callers at the same instant get consecutive 100ms slots.
	for i := 1; i <= 4; i++ {
		d := th.Acquire("ep", fmt.Sprint("c", i), lim, now)
		if d.Admitted() || d.RetryAfter != time.Duration(i)*100*time.Millisecond {
			t.Fatalf("caller %d: admitted %v, retry after %v", i, d.Admitted(), d.RetryAfter)
		}
	}
	// Coming back early keeps the slot; on time, it goes.
	if d := th.Acquire("ep", "c2", lim, now.Add(150*time.Millisecond)); d.Admitted() || d.RetryAfter != 50*time.Millisecond {
		t.Fatalf("early: %+v", d)
	}
	if d := th.Acquire("ep", "c2", lim, now.Add(200*time.Millisecond)); !d.Admitted() {
		t.Fatal("on time: refused")
	}
	// A newcomer queues behind every reservation.
	if d := th.Acquire("ep", "late", lim, now.Add(200*time.Millisecond)); d.RetryAfter != 300*time.Millisecond {
		t.Fatalf("newcomer: %+v", d)
	}
}

func TestMaxInFlightWakesWaitersInOrder(t *testing.T) {
	var woken []string
	th := New(func(c string) { woken = append(woken, c) })
	lim := Limits{MaxInFlight: 2}
	now := time.Now()
	a := th.Acquire("ep", "a", lim, now)
	b := th.Acquire("ep", "b", lim, now)
	if !a.Admitted() || !b.Admitted() {
		t.Fatal("two slots expected")
	}
	for _, c := range []string{"c", "d", "c"} {
		if d := th.Acquire("ep", c, lim, now); d.Admitted() || d.RetryAfter != 0 {
			t.Fatalf("%s admitted beyond the cap", c)
		}
	}
	// Another endpoint is not affected.
	if !th.Acquire("other", "x", lim, now).Admitted() {
		t.Fatal("limits leak across endpoints")
	}
	a.Release()
	a.Release() // twice is harmless
	if len(woken) != 1 || woken[0] != "c" {
		t.Fatalf("woken %v, want [c]", woken)
	}
	if !th.Acquire("ep", "c", lim, now).Admitted() {
		t.Fatal("the woken caller is refused")
	}
	b.Release()
	if len(woken) != 2 || woken[1] != "d" {
		t.Fatalf("woken %v, want [c d]", woken)
	}
}

func TestUnlimitedIsFree(t *testing.T) {
	th := New(nil)
	for i := 0; i < 1000; i++ {
		if !th.Acquire("ep", fmt.Sprint(i), Limits{}, time.Now()).Admitted() {
			t.Fatal("refused without limits")
		}
	}
	if len(th.endpoints) != 0 {
		t.Fatal("state kept for an unlimited endpoint")
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	th := New(nil)
	lim := Limits{MaxInFlight: 8}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		th.Acquire("ep", "c", lim, now).Release()
	}
}

// Timeouts halve an endpoint's in-flight cap down to one; answers bring it back one
// step at a time, waking a waiter each time the cap grows.
func TestTimeoutsReduceConcurrencyAndAnswersRestoreIt(t *testing.T) {
	var woken []string
	th := New(func(c string) { woken = append(woken, c) })
	lim := Limits{MaxInFlight: 16}
	now := time.Unix(0, 0)
	// Each step down is a change to tell; a timeout at one attempt at a time is not.
	for i, want := range []struct {
		cap    int
		change Change
	}{{8, Reduced}, {4, Reduced}, {2, Reduced}, {1, Reduced}, {1, Unchanged}} {
		if got, change := th.Outcome("ep", true, lim); got != want.cap || change != want.change {
			t.Fatalf("timeout %d: cap %d (%v), want %d (%v)", i+1, got, change, want.cap, want.change)
		}
	}
	first := th.Acquire("ep", "a", lim, now)
	if !first.Admitted() {
		t.Fatal("one attempt at a time must still go")
	}
	if th.Acquire("ep", "b", lim, now).Admitted() {
		t.Fatal("a second concurrent attempt went through a cap of one")
	}
	if got, _ := th.Outcome("ep", false, lim); got != 2 {
		t.Fatalf("after an answer: cap %d, want 2", got)
	}
	if len(woken) != 1 || woken[0] != "b" {
		t.Fatalf("the waiter must be woken when the cap grows: %v", woken)
	}
	first.Release()
	for i := 3; i < 16; i++ {
		if got, change := th.Outcome("ep", false, lim); got != i || change != Unchanged {
			t.Fatalf("cap %d, want %d", got, i)
		}
	}
	if got, change := th.Outcome("ep", false, lim); got != 0 || change != Restored {
		t.Fatalf("back at the configured cap, the endpoint is no longer reduced: %d", got)
	}
}
