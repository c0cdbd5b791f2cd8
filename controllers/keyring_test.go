package controllers

import (
	"fmt"
	"testing"
	"time"
)

func TestKeyringKeepsPreviousSecretsForTheirGracePeriodOnly(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	k := keyring{current: "a"}
	if k.observe("a", time.Hour, now) {
		t.Fatal("the same value is not a change")
	}
	if !k.observe("b", time.Hour, now) || len(k.previous) != 1 || k.previous[0].Secret != "a" {
		t.Fatalf("after a change: %+v", k)
	}
	if got := k.signingValues(now.Add(time.Minute)); len(got) != 2 || got[0] != "b" || got[1] != "a" {
		t.Fatalf("signing values %v, want current first", got)
	}
	if got := k.signingValues(now.Add(2 * time.Hour)); len(got) != 1 {
		t.Fatalf("after the grace period: %v", got)
	}
	if !k.prune(now.Add(2*time.Hour)) || len(k.previous) != 0 || k.expiresAt() != nil {
		t.Fatalf("prune: %+v", k)
	}
	// A grace period of 0s keeps nothing.
	k.observe("c", 0, now)
	if len(k.previous) != 0 {
		t.Fatalf("0s grace: %+v", k)
	}
	// Going back to a value that is still in the grace period does not list it twice.
	k = keyring{current: "x"}
	k.observe("y", time.Hour, now)
	k.observe("x", time.Hour, now)
	if len(k.previous) != 1 || k.previous[0].Secret != "y" {
		t.Fatalf("back to x: %+v", k.previous)
	}
}

func TestKeyringIsBounded(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	k := keyring{current: "s0"}
	for i := 1; i <= 15; i++ {
		k.observe(fmt.Sprint("s", i), time.Hour, now.Add(time.Duration(i)*time.Second))
	}
	if len(k.previous) != maxPreviousSecrets {
		t.Fatalf("%d previous secrets kept, want %d", len(k.previous), maxPreviousSecrets)
	}
	if k.previous[0].Secret != "s5" || k.previous[len(k.previous)-1].Secret != "s14" {
		t.Fatalf("kept %s..%s, want the newest (s5..s14)", k.previous[0].Secret, k.previous[len(k.previous)-1].Secret)
	}
	exp, ok := k.nextExpiry()
	if !ok || !exp.Equal(now.Add(6*time.Second+time.Hour)) { // s5 was replaced at 6s
		t.Fatalf("next expiry %v", exp)
	}
}
