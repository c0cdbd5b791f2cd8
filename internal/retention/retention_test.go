package retention

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// delivery is a finished direct delivery to endpoint ep, completed minutes after t0.
func delivery(name, ep string, failed bool, minutes int, bytes int64) Unit {
	return Unit{Namespace: "shop", Name: name, Finished: true, Failed: failed, CompletedAt: t0.Add(time.Duration(minutes) * time.Minute),
		Bytes: bytes, Deliveries: []Outcome{{Endpoint: ep, Failed: failed}}}
}

func pruned(units []Unit, plan Plan) map[string]string {
	out := map[string]string{}
	for _, p := range plan.Prune {
		out[units[p.Unit].Name] = p.Reason
	}
	return out
}

func TestAgeKeepsFailedLonger(t *testing.T) {
	units := []Unit{delivery("ok-old", "a", false, 0, 1), delivery("ok-new", "a", false, 50, 1),
		delivery("failed-old", "a", true, 0, 1), {Namespace: "shop", Name: "pending", Bytes: 1}}
	plan := Decide(units, Policy{SucceededAge: time.Hour, FailedAge: 2 * time.Hour}, t0.Add(time.Hour))
	got := pruned(units, plan)
	if len(got) != 1 || got["ok-old"] != ReasonAge {
		t.Fatalf("pruned %v, want only ok-old by age", got)
	}
	plan = Decide(units, Policy{SucceededAge: time.Hour, FailedAge: 2 * time.Hour}, t0.Add(3*time.Hour))
	if got := pruned(units, plan); len(got) != 3 || got["pending"] != "" {
		t.Fatalf("pruned %v, want every finished unit and never the pending one", got)
	}
}

func TestCountPerEndpointKeepsTheNewest(t *testing.T) {
	var units []Unit
	for i := range 5 {
		units = append(units, delivery(fmt.Sprintf("a-ok-%d", i), "a", false, i, 1))
		units = append(units, delivery(fmt.Sprintf("a-failed-%d", i), "a", true, i, 1))
		units = append(units, delivery(fmt.Sprintf("b-ok-%d", i), "b", false, i, 1))
	}
	limits := func(ns, ep string) Limits {
		if ep == "b" {
			return Limits{Succeeded: 4} // an override
		}
		return Limits{Succeeded: 2, Failed: 3}
	}
	got := pruned(units, Decide(units, Policy{PerEndpoint: limits}, t0))
	want := map[string]string{"a-ok-0": ReasonCount, "a-ok-1": ReasonCount, "a-ok-2": ReasonCount,
		"a-failed-0": ReasonCount, "a-failed-1": ReasonCount, "b-ok-0": ReasonCount}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("pruned %v\nwant   %v", got, want)
	}
}

func TestCountPerNamespacePrunesSucceededEventsFirst(t *testing.T) {
	units := []Unit{
		{Namespace: "shop", Name: "failed-oldest", Event: true, Finished: true, Failed: true, CompletedAt: t0},
		{Namespace: "shop", Name: "ok-old", Event: true, Finished: true, CompletedAt: t0.Add(time.Minute)},
		{Namespace: "shop", Name: "ok-new", Event: true, Finished: true, CompletedAt: t0.Add(2 * time.Minute)},
		{Namespace: "shop", Name: "in-progress", Event: true},
		{Namespace: "other", Name: "ok-other", Event: true, Finished: true, CompletedAt: t0},
	}
	got := pruned(units, Decide(units, Policy{EventsPerNamespace: 1}, t0))
	want := map[string]string{"ok-old": ReasonCount, "ok-new": ReasonCount}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("pruned %v, want %v (the failed event outlives the succeeded ones)", got, want)
	}
}

func TestBudgetPrunesEarlyOldestSucceededFirst(t *testing.T) {
	units := []Unit{
		delivery("failed-0", "a", true, 0, 100),
		delivery("ok-1", "a", false, 1, 100),
		delivery("ok-2", "a", false, 2, 100),
		delivery("ok-3", "a", false, 3, 100),
		{Namespace: "shop", Name: "live", Bytes: 400},
	}
	// 800 of 1000 bytes: above PruneStart (750), pruned to PruneTarget (700) or less.
	plan := Decide(units, Policy{MaxBytes: 1000}, t0)
	got := pruned(units, plan)
	if len(got) != 1 || got["ok-1"] != ReasonBudget || plan.AfterBytes != 700 || plan.LiveBytes != 400 || plan.RetainedBytes != 800 {
		t.Fatalf("pruned %v, after %d (live %d, retained %d); want ok-1 alone and 700 left", got, plan.AfterBytes, plan.LiveBytes, plan.RetainedBytes)
	}
	// Below PruneStart nothing goes.
	if plan := Decide(units[1:], Policy{MaxBytes: 1000}, t0); len(plan.Prune) != 0 {
		t.Fatalf("pruned %v at 700 of 1000 bytes", pruned(units[1:], plan))
	}
	// Live work alone above the budget: every finished unit goes, failed last, and the
	// live one stays.
	units[4].Bytes = 2000
	got = pruned(units, Decide(units, Policy{MaxBytes: 1000}, t0))
	if len(got) != 4 || got["live"] != "" {
		t.Fatalf("pruned %v, want the four finished units", got)
	}
}

func TestBudgetCountsWhatOtherRulesPrune(t *testing.T) {
	units := []Unit{delivery("expired", "a", false, 0, 500), delivery("ok", "a", false, 59, 300)}
	plan := Decide(units, Policy{SucceededAge: time.Hour, MaxBytes: 1000}, t0.Add(time.Hour))
	if got := pruned(units, plan); len(got) != 1 || got["expired"] != ReasonAge || plan.AfterBytes != 300 {
		t.Fatalf("pruned %v (after %d bytes), want only the expired unit: the rest is within budget", got, plan.AfterBytes)
	}
}

func TestGateHoldsAndReleasesInOrder(t *testing.T) {
	g := NewGate(1000)
	g.now = func() time.Time { return t0.Add(time.Second) }
	// Two namespaces hold bytes: each has a share of 500.
	g.Observe(Count{Bytes: 800, Unfanned: 0, ByNamespace: map[string]int64{"shop": 700, "other": 100}}, t0)
	if !g.Admit("shop/a", 0, 100).Admitted {
		t.Fatal("900 of 1000 bytes (HoldAt) refused")
	}
	if g.Admit("shop/b", 0, 1).Admitted || g.Admit("shop/c", 0, 1).Admitted || g.Admit("shop/b", 0, 1).Admitted {
		t.Fatal("admitted above HoldAt for a namespace over its share")
	}
	// A namespace under its share goes on up to the whole budget.
	if d := g.Admit("other/x", 0, 50); !d.Admitted {
		t.Fatalf("a namespace under its share was held: %+v", d)
	}
	if d := g.Admit("other/y", 0, 100); d.Admitted {
		t.Fatalf("admitted beyond the whole budget: %+v", d)
	}
	if g.Holding() != 3 {
		t.Fatalf("holding %d events, want 3", g.Holding())
	}
	if got := g.Release(); got != nil {
		t.Fatalf("released %v while still full", got)
	}
	g.Observe(Count{Bytes: 400, Unfanned: 0, ByNamespace: map[string]int64{"shop": 300, "other": 100}}, t0) // shop/a's and other/x's bytes, admitted after the count, still count
	if g.Used() != 550 {
		t.Fatalf("used %d, want 550: reservations newer than the count are kept", g.Used())
	}
	g.Forget("shop/c")
	// Namespaces take turns, each oldest first.
	if got := g.Release(); !slices.Equal(got, []string{"other/y", "shop/b"}) {
		t.Fatalf("released %v, want [other/y shop/b]", got)
	}
	if g.Holding() != 0 || g.Release() != nil {
		t.Fatal("a released event is still held")
	}
	g.Observe(Count{Bytes: 450, Unfanned: 0, ByNamespace: nil}, t0.Add(time.Minute))
	if g.Used() != 450 {
		t.Fatalf("used %d, want 450: a count taken well after a reservation replaces it", g.Used())
	}
	if !NewGate(0).Admit("x/y", 0, 1<<40).Admitted || !NewGate(0).AdmitCreate("x", "", 1<<40).Admitted {
		t.Fatal("no budget refused")
	}
}

// At the door: creates stop at AdmitAt, but a namespace under its share goes on to
// HoldAt, and the refusal says who is over its share and by how much.
func TestCreatesAreRefusedFromTheNamespaceOverItsShare(t *testing.T) {
	g := NewGate(1000)
	g.now = func() time.Time { return t0 }
	g.Observe(Count{Bytes: 790, Unfanned: 0, ByNamespace: map[string]int64{"burst": 780, "steady": 10}}, t0)
	if d := g.AdmitCreate("burst", "", 20); d.Admitted || d.NamespaceUsed != 780 || d.Share != 500 || d.Namespaces != 2 {
		t.Fatalf("the namespace over its share: %+v", d)
	}
	d := g.AdmitCreate("burst", "", 20)
	if msg := d.Explain(); !strings.Contains(msg, "namespace burst holds 0.0 MiB") && !strings.Contains(msg, "namespace burst holds") {
		t.Fatalf("explained as %q", msg)
	}
	if d := g.AdmitCreate("steady", "", 20); !d.Admitted {
		t.Fatalf("the namespace under its share was refused: %+v", d)
	}
	if d := g.AdmitCreate("steady", "", 200); d.Admitted {
		t.Fatalf("admitted beyond the whole budget: %+v", d)
	}
	// A namespace alone stops at AdmitAt, which leaves room for the next to come.
	alone := NewGate(1000)
	alone.Observe(Count{Bytes: 750, Unfanned: 0, ByNamespace: map[string]int64{"only": 750}}, t0)
	if d := alone.AdmitCreate("only", "", 40); !d.Admitted {
		t.Fatalf("the only namespace was refused below AdmitAt: %+v", d)
	}
	if d := alone.AdmitCreate("only", "", 40); d.Admitted || d.Namespaces != 1 || strings.Contains(d.Explain(), "share") {
		t.Fatalf("the only namespace above AdmitAt: %+v %q", d, d.Explain())
	}
	if d := alone.AdmitCreate("newcomer", "", 40); !d.Admitted {
		t.Fatalf("a newcomer was refused while one namespace holds the budget: %+v", d)
	}
}

// Events admitted while nothing counted them at the door (the webhook off) cannot keep
// fan-out shut: they count only up to AdmitAt there.
func TestUnfannedEventsCannotShutFanOut(t *testing.T) {
	g := NewGate(1000)
	g.Observe(Count{Bytes: 950, Unfanned: 950, ByNamespace: map[string]int64{"flood": 950}}, t0)
	if d := g.Admit("flood/e1", 0, 50); !d.Admitted {
		t.Fatalf("held with every byte an event not fanned out: %+v", d)
	}
}

// What was admitted counts on top of a count until the count shows it: a created event
// once the count has the event, a fan-out once the count has it fanned out.
func TestAReservationCountsUntilACountShowsIt(t *testing.T) {
	g := NewGate(1000)
	g.now = func() time.Time { return t0 }
	g.AdmitCreate("shop", "e1", 100)
	g.Admit("shop/e2", 0, 200)
	g.Observe(Count{Bytes: 50, ByNamespace: map[string]int64{"shop": 50}, Events: map[string]bool{"shop/e2": false}}, t0.Add(10*time.Millisecond))
	if g.Used() != 350 {
		t.Fatalf("used %d, want 350: neither shows in the count as admitted", g.Used())
	}
	g.Observe(Count{Bytes: 150, ByNamespace: map[string]int64{"shop": 150}, Events: map[string]bool{"shop/e1": false, "shop/e2": false}}, t0.Add(20*time.Millisecond))
	if g.Used() != 350 {
		t.Fatalf("used %d, want 350: the created event is counted, its fan-out not yet", g.Used())
	}
	g.Observe(Count{Bytes: 350, ByNamespace: map[string]int64{"shop": 350}, Events: map[string]bool{"shop/e1": false, "shop/e2": true}}, t0.Add(30*time.Millisecond))
	if g.Used() != 350 {
		t.Fatalf("used %d, want 350: everything is in the count", g.Used())
	}
}

// A fan-out adds its event's own bytes only when nothing counts them yet.
func TestAFanOutCountsItsEventOnce(t *testing.T) {
	g := NewGate(10000)
	g.Observe(Count{Bytes: 100, ByNamespace: map[string]int64{"shop": 100}, Events: map[string]bool{"shop/seen": false}}, t0)
	g.Admit("shop/seen", 100, 40)
	if g.Used() != 140 {
		t.Fatalf("used %d, want 140: the counted event's bytes added again", g.Used())
	}
	g.AdmitCreate("shop", "created", 100)
	g.Admit("shop/created", 100, 40)
	if g.Used() != 280 {
		t.Fatalf("used %d, want 280: the admitted event's bytes added again", g.Used())
	}
	g.Admit("shop/unknown", 100, 40)
	if g.Used() != 420 {
		t.Fatalf("used %d, want 420: an event nothing counted must bring its bytes", g.Used())
	}
}
