package keyring

import (
	"fmt"
	"testing"
	"time"
)

func TestKeyringKeepsPreviousSecretsForTheirGracePeriodOnly(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	k := Keyring{Current: "a"}
	if k.Observe("a", time.Hour, now) {
		t.Fatal("the same value is not a change")
	}
	if !k.Observe("b", time.Hour, now) || len(k.Previous) != 1 || k.Previous[0].Secret != "a" {
		t.Fatalf("after a change: %+v", k)
	}
	if got := k.SigningValues(now.Add(time.Minute)); len(got) != 2 || got[0] != "b" || got[1] != "a" {
		t.Fatalf("signing values %v, want current first", got)
	}
	if got := k.SigningValues(now.Add(2 * time.Hour)); len(got) != 1 {
		t.Fatalf("after the grace period: %v", got)
	}
	if !k.Prune(now.Add(2*time.Hour)) || len(k.Previous) != 0 || k.ExpiresAt() != nil {
		t.Fatalf("prune: %+v", k)
	}
	// A grace period of 0s keeps nothing.
	k.Observe("c", 0, now)
	if len(k.Previous) != 0 {
		t.Fatalf("0s grace: %+v", k)
	}
	// Going back to a value that is still in the grace period does not list it twice.
	k = Keyring{Current: "x"}
	k.Observe("y", time.Hour, now)
	k.Observe("x", time.Hour, now)
	if len(k.Previous) != 1 || k.Previous[0].Secret != "y" {
		t.Fatalf("back to x: %+v", k.Previous)
	}
}

func TestKeyringIsBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	k := Keyring{Current: "s0"}
	for i := 1; i <= 15; i++ {
		k.Observe(fmt.Sprint("s", i), time.Hour, now.Add(time.Duration(i)*time.Second))
	}
	if len(k.Previous) != MaxPrevious {
		t.Fatalf("%d previous secrets kept, want %d", len(k.Previous), MaxPrevious)
	}
	if k.Previous[0].Secret != "s5" || k.Previous[len(k.Previous)-1].Secret != "s14" {
		t.Fatalf("kept %s..%s, want the newest (s5..s14)", k.Previous[0].Secret, k.Previous[len(k.Previous)-1].Secret)
	}
	exp, ok := k.NextExpiry()
	if !ok || !exp.Equal(now.Add(6*time.Second+time.Hour)) { // s5 was replaced at 6s
		t.Fatalf("next expiry %v", exp)
	}
}
