package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/pgdays"
	"github.com/hookline/hookline/internal/testenv"
)

var pg *testenv.Postgres

func TestMain(m *testing.M) {
	var err error
	if pg, err = testenv.StartPostgres(); err != nil {
		os.Exit(testenv.Without(m, err))
	}
	code := m.Run()
	_ = pg.Remove()
	os.Exit(code)
}

// open gives each test a queue in a database of its own.
func open(t *testing.T) *Queue {
	t.Helper()
	testenv.Needs(t)
	dsn, err := pg.Database(context.Background(), strings.ToLower(t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	q, err := Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	return q
}

func event(ns, name string, endpoints ...string) Event {
	return Event{Namespace: ns, Name: name, UID: ns + "-" + name, Type: "order.created",
		Payload: []byte(fmt.Sprintf(`{"order": %q}`, name)), MessageID: "msg_" + ns + name, Endpoints: endpoints}
}

// claimNS claims what is due (owner is suffixed with ns, as the tests record it).
func claimNS(t *testing.T, q *Queue, owner, ns string, lease time.Duration) []Claim {
	t.Helper()
	claims, err := q.Claim(context.Background(), owner+"-"+ns, 1000, lease)
	if err != nil {
		t.Fatal(err)
	}
	return claims
}

func TestPublishIsIdempotentByName(t *testing.T) {
	t.Parallel()
	q := open(t)
	ctx := context.Background()
	ns := "publish"
	n, err := q.Publish(ctx, []Event{event(ns, "e1", "a", "b", "c"), event(ns, "e2", "a")})
	if err != nil || n != 4 {
		t.Fatalf("queued %d (%v), want 4", n, err)
	}
	again := event(ns, "e1", "a", "b", "c", "d")
	again.Payload = []byte(`{"changed": true}`)
	if n, err := q.Publish(ctx, []Event{again}); err != nil || n != 0 {
		t.Fatalf("publishing e1 again queued %d (%v), want 0", n, err)
	}
	// The history is partitioned by day; a name is one message across days too.
	again.CreatedAt = time.Now().Add(48 * time.Hour)
	if n, err := q.Publish(ctx, []Event{again}); err != nil || n != 0 {
		t.Fatalf("publishing e1 again two days later queued %d (%v), want 0", n, err)
	}
	var payloads int
	if err := q.pool.QueryRow(ctx, `SELECT count(*) FROM hookline_queue_events WHERE namespace = $1`, ns).Scan(&payloads); err != nil {
		t.Fatal(err)
	}
	if payloads != 2 {
		t.Fatalf("%d payload rows for two events fanned out to four deliveries, want 2: one per event", payloads)
	}
	ds, err := q.Deliveries(ctx, ns, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 4 {
		t.Fatalf("%d deliveries, want 4", len(ds))
	}
	for _, d := range ds {
		if d.State != StatePending || d.MessageID != "msg_"+ns+d.EventName {
			t.Fatalf("%+v", d)
		}
	}
}

// Two workers claim side by side: every delivery is claimed once.
func TestConcurrentClaimsNeverShareADelivery(t *testing.T) {
	t.Parallel()
	q := open(t)
	ctx := context.Background()
	ns := "claims"
	var events []Event
	for i := range 100 {
		events = append(events, event(ns, fmt.Sprintf("e%d", i), "a", "b"))
	}
	if _, err := q.Publish(ctx, events); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	claimedBy := map[int64]string{}
	var wg sync.WaitGroup
	for _, owner := range []string{"one", "two"} {
		wg.Go(func() {
			for {
				claims, err := q.Claim(ctx, owner, 7, time.Minute) // small claims, so that both interleave
				if err != nil {
					t.Error(err)
					return
				}
				if len(claims) == 0 {
					return
				}
				mu.Lock()
				for _, c := range claims {
					if other, dup := claimedBy[c.ID]; dup {
						t.Errorf("delivery %d claimed by %s and %s", c.ID, other, owner)
					}
					claimedBy[c.ID] = owner
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(claimedBy) != 200 {
		t.Fatalf("%d of 200 deliveries claimed", len(claimedBy))
	}
	perOwner := map[string]int{}
	for _, o := range claimedBy {
		perOwner[o]++
	}
	t.Logf("claimed per worker: %v", perOwner)
}

// A claim whose holder died is claimed again after its lease, with the same message id
// and body; the late holder's record is refused.
func TestAnAbandonedClaimIsClaimedAgainWithTheSameMessage(t *testing.T) {
	t.Parallel()
	q := open(t)
	ctx := context.Background()
	ns := "lease"
	if _, err := q.Publish(ctx, []Event{event(ns, "e1", "a")}); err != nil {
		t.Fatal(err)
	}
	first := claimNS(t, q, "dead", ns, time.Second)
	if len(first) != 1 {
		t.Fatalf("claimed %d", len(first))
	}
	if again := claimNS(t, q, "other", ns, time.Minute); len(again) != 0 {
		t.Fatal("a leased delivery was claimed again before its lease ended")
	}
	var second []Claim
	deadline := time.Now().Add(10 * time.Second)
	for len(second) == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // the lease is measured by the database's clock
		second = claimNS(t, q, "other", ns, time.Minute)
	}
	if len(second) != 1 {
		t.Fatal("the abandoned claim was not claimed again after its lease")
	}
	if second[0].ID != first[0].ID || second[0].MessageID != first[0].MessageID || !bytes.Equal(second[0].Payload, first[0].Payload) {
		t.Fatalf("claimed again as %+v, first as %+v: the same message id and bytes are owed", second[0], first[0])
	}
	results, err := q.Record(ctx, "dead-"+ns, []Outcome{{Ref: first[0].Ref, State: StateSucceeded, Attempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(results[0], ErrLeaseLost) {
		t.Fatalf("the dead holder's late record: %v, want ErrLeaseLost", results[0])
	}
	results, err = q.Record(ctx, "other-"+ns, []Outcome{{Ref: first[0].Ref, State: StateSucceeded, Attempts: 1,
		Attempt: &Attempt{Time: time.Now(), StatusCode: 200}}})
	if err != nil || results[0] != nil {
		t.Fatalf("the holder's record: %v %v", err, results)
	}
	ds, _ := q.Deliveries(ctx, ns, 1)
	if ds[0].State != StateSucceeded || ds[0].FinishedAt == nil || len(ds[0].History) != 1 || ds[0].ResponseStatus != 200 {
		t.Fatalf("recorded %+v", ds[0])
	}
}

// Outcomes are committed in batches; a retry is a row with a due time, and the
// history keeps the last ten attempts.
func TestRecorderCommitsInBatchesAndRetriesAreDue(t *testing.T) {
	t.Parallel()
	q := open(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := "record"
	var events []Event
	for i := range 50 {
		events = append(events, event(ns, fmt.Sprintf("e%d", i), "a"))
	}
	if _, err := q.Publish(ctx, events); err != nil {
		t.Fatal(err)
	}
	owner := "w"
	claims := claimNS(t, q, owner, ns, time.Minute)
	if len(claims) != 50 {
		t.Fatalf("claimed %d", len(claims))
	}
	rec := NewRecorder(q, owner+"-"+ns, 64, 5*time.Millisecond)
	go rec.Run(ctx)
	later := time.Now().Add(time.Hour)
	var wg sync.WaitGroup
	for _, c := range claims {
		wg.Go(func() {
			if err := rec.Record(ctx, Outcome{Ref: c.Ref, State: StateRetrying, Attempts: 1, DueAt: later,
				Attempt: &Attempt{Time: time.Now(), StatusCode: 503}}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := rec.Commits(); n >= 50 {
		t.Fatalf("%d commits for 50 outcomes: not batched", n)
	}
	if again := claimNS(t, q, owner, ns, time.Minute); len(again) != 0 {
		t.Fatalf("%d retries claimed before they are due", len(again))
	}
	// Eleven more attempts of one delivery: the history keeps ten.
	ref, id := claims[0].Ref, claims[0].ID
	for i := range 11 {
		if _, err := q.pool.Exec(ctx, `UPDATE hookline_queue_deliveries SET lease_owner = $2 WHERE id = $1`, id, "w-"+ns); err != nil {
			t.Fatal(err)
		}
		if _, err := q.Record(ctx, "w-"+ns, []Outcome{{Ref: ref, State: StateRetrying, Attempts: int32(i + 2), DueAt: later,
			Attempt: &Attempt{Time: time.Now(), StatusCode: int32(500 + i)}}}); err != nil {
			t.Fatal(err)
		}
	}
	ds, _ := q.Deliveries(ctx, ns, 100)
	for _, d := range ds {
		if d.ID == id && (len(d.History) != 10 || d.History[9].StatusCode != 510 || d.History[0].StatusCode != 501) {
			t.Fatalf("history %+v, want the last ten (501..510)", d.History)
		}
	}
}

// An idle worker is woken by a publish within moments, not at a poll.
func TestPublishWakesIdleWorkers(t *testing.T) {
	t.Parallel()
	q := open(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wake := q.Wakeups(ctx)
	select {
	case <-wake: // the first wakeup says the listener is up
	case <-time.After(10 * time.Second):
		t.Fatal("the listener did not start")
	}
	published := time.Now()
	if _, err := q.Publish(ctx, []Event{event("wake", "e1", "a")}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-wake:
		t.Logf("woken %v after the publish", time.Since(published))
	case <-time.After(5 * time.Second):
		t.Fatal("a publish did not wake the listener")
	}
}

// The queue reads as the archive does for the history API: filters, names as a
// fan-out's WebhookDelivery would have, the payload, newest first.
func TestQueueListsAsTheHistory(t *testing.T) {
	t.Parallel()
	q := open(t)
	ctx := context.Background()
	ns := "history"
	if _, err := q.Publish(ctx, []Event{event(ns, "e1", "acme", "globex"), event(ns, "e2", "acme")}); err != nil {
		t.Fatal(err)
	}
	claims := claimNS(t, q, "w", ns, time.Minute)
	var outcomes []Outcome
	for _, c := range claims {
		o := Outcome{Ref: c.Ref, State: StateSucceeded, Attempts: 1, Attempt: &Attempt{Time: time.Now(), StatusCode: 200}}
		if c.Endpoint == "globex" {
			o.State, o.Attempt.StatusCode = StateExhausted, 500
		}
		outcomes = append(outcomes, o)
	}
	if _, err := q.Record(ctx, "w-"+ns, outcomes); err != nil {
		t.Fatal(err)
	}
	all, err := q.List(ctx, archive.Filter{Namespace: ns})
	if err != nil || len(all) != 3 {
		t.Fatalf("listed %d (%v), want 3", len(all), err)
	}
	acme, _ := q.List(ctx, archive.Filter{Namespace: ns, Endpoint: "acme", Phase: StateSucceeded})
	if len(acme) != 2 || acme[0].Endpoint != "acme" || string(acme[0].Payload) == "" || len(acme[0].History) != 1 {
		t.Fatalf("acme's: %+v", acme)
	}
	name := hooklinev1.DeliveryName("e1", "globex")
	one, _ := q.List(ctx, archive.Filter{Namespace: ns, Name: name})
	if len(one) != 1 || one[0].Name != name || one[0].Phase != StateExhausted || one[0].History[0].StatusCode != 500 {
		t.Fatalf("by name %s: %+v", name, one)
	}
	if other, _ := q.List(ctx, archive.Filter{Namespace: "elsewhere"}); len(other) != 0 {
		t.Fatalf("another namespace's listing returned %d", len(other))
	}
}

// Retention drops whole days of history: a day whose deliveries have all finished goes
// with its events and payloads; a day with a delivery still unfinished stays, as does
// every day that has not ended before the cutoff. A dropped day can be written again.
func TestDropBeforeDropsWholeFinishedDays(t *testing.T) {
	t.Parallel()
	q := open(t)
	ctx := context.Background()
	ns := "retention"
	old, older, now := time.Now().Add(-40*24*time.Hour), time.Now().Add(-41*24*time.Hour), time.Now()
	at := func(e Event, t time.Time) Event { e.CreatedAt = t; return e }
	if _, err := q.Publish(ctx, []Event{at(event(ns, "done", "a", "b"), old), at(event(ns, "live", "a"), older),
		at(event(ns, "older-done", "a"), older), event(ns, "recent", "a")}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.pool.Exec(ctx, `UPDATE hookline_queue_deliveries SET finished_at = now(), state = 'Succeeded' WHERE event_name <> 'live'`); err != nil {
		t.Fatal(err)
	}
	var before int
	if err := q.pool.QueryRow(ctx, `SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE c.relkind = 'r'`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	dropped, err := q.DropBefore(ctx, now.Add(-30*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{pgdays.Name(deliveriesTable, old), pgdays.Name(eventsTable, old)}
	if fmt.Sprint(dropped) != fmt.Sprint(want) {
		t.Fatalf("dropped %v, want %v (the older day holds a live delivery)", dropped, want)
	}
	var after int
	if err := q.pool.QueryRow(ctx, `SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE c.relkind = 'r'`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before-2 {
		t.Fatalf("%d partitions after retention, want %d", after, before-2)
	}
	ds, err := q.Deliveries(ctx, ns, 10)
	if err != nil {
		t.Fatal(err)
	}
	left := map[string]int{}
	for _, d := range ds {
		left[d.EventName]++
	}
	if left["done"] != 0 || left["live"] != 1 || left["older-done"] != 1 || left["recent"] != 1 {
		t.Fatalf("left after retention: %v, want live, older-done and recent", left)
	}
	// Once its day is dropped, a name is new again; the day's partitions are made anew.
	if n, err := q.Publish(ctx, []Event{at(event(ns, "done", "a"), old)}); err != nil || n != 1 {
		t.Fatalf("publishing a dropped day's name queued %d (%v), want 1", n, err)
	}
	// Another replica (sharing the database) drops that day again; this one still
	// believes its partitions exist, and publishing there works all the same.
	other, err := Open(ctx, q.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := q.pool.Exec(ctx, `UPDATE hookline_queue_deliveries SET finished_at = now(), state = 'Succeeded'`); err != nil {
		t.Fatal(err)
	}
	if dropped, err := other.DropBefore(ctx, now.Add(-30*24*time.Hour)); err != nil || len(dropped) != 4 {
		t.Fatalf("the other replica dropped %v (%v), want both old days", dropped, err)
	}
	if n, err := q.Publish(ctx, []Event{at(event(ns, "late", "a"), old)}); err != nil || n != 1 {
		t.Fatalf("publishing into a day another replica dropped queued %d (%v), want 1", n, err)
	}
}

// A Failed or Exhausted delivery is started again by name, with the same message; a
// live or succeeded one is not.
func TestRetryStartsAFinishedDeliveryAgain(t *testing.T) {
	t.Parallel()
	q := open(t)
	ctx := context.Background()
	ns := "retry"
	if _, err := q.Publish(ctx, []Event{event(ns, "e1", "acme", "globex")}); err != nil {
		t.Fatal(err)
	}
	claims := claimNS(t, q, "w", ns, time.Minute)
	var outcomes []Outcome
	for _, c := range claims {
		state := StateSucceeded
		if c.Endpoint == "globex" {
			state = StateExhausted
		}
		outcomes = append(outcomes, Outcome{Ref: c.Ref, State: state, Attempts: 3})
	}
	if _, err := q.Record(ctx, "w-"+ns, outcomes); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name           string
		found, retried bool
	}{
		{hooklinev1.DeliveryName("e1", "globex"), true, true},
		{hooklinev1.DeliveryName("e1", "acme"), true, false},
		{hooklinev1.DeliveryName("e1", "nobody"), false, false},
	} {
		found, retried, err := q.Retry(ctx, ns, c.name)
		if err != nil || found != c.found || retried != c.retried {
			t.Fatalf("retry %s: found %v retried %v (%v), want %v %v", c.name, found, retried, err, c.found, c.retried)
		}
	}
	again := claimNS(t, q, "w2", ns, time.Minute)
	if len(again) != 1 || again[0].Endpoint != "globex" || again[0].Attempts != 0 || again[0].MessageID != claims[0].MessageID {
		t.Fatalf("claimed after the retry: %+v", again)
	}
}
