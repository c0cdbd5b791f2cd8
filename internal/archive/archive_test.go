package archive

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/hookline/hookline/internal/pgdays"
	"github.com/hookline/hookline/internal/testenv"
)

var dsn string

func TestMain(m *testing.M) {
	pg, err := testenv.StartPostgres()
	if err != nil {
		os.Exit(testenv.Without(m, err))
	}
	dsn = pg.DSN
	code := m.Run()
	_ = pg.Remove()
	os.Exit(code)
}

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func uid(ns string, i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%04d%08d", len(ns), i) }

func delivery(ns string, i int, finished time.Time, eventUID string) Delivery {
	d := Delivery{UID: uid(ns, i), FinishedAt: finished, Namespace: ns, Name: fmt.Sprintf("d-%d", i), Endpoint: "acme",
		EventType: "order.created", MessageID: fmt.Sprintf("msg_%d", i), Phase: "Succeeded", Attempts: 2,
		SignatureScheme: "StandardWebhooks", CreatedAt: finished.Add(-time.Second),
		History: []Attempt{{Time: finished.Add(-time.Second).UTC(), StatusCode: 503, Response: "busy"}, {Time: finished.UTC(), DurationMs: 12, StatusCode: 200, Response: "ok"}}}
	if eventUID != "" {
		d.EventUID, d.EventName = eventUID, "order-1"
	} else {
		d.Payload = json.RawMessage(fmt.Sprintf(`{"direct":%d}`, i))
	}
	return d
}

func TestMigrationsApplyOnce(t *testing.T) {
	testenv.Needs(t)
	s := open(t)
	open(t) // a second manager starting: nothing to apply
	var n int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM hookline_schema_migrations`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("%d migrations recorded, want 1", n)
	}
}

// Writing the same deliveries twice (a crash between the write and the delete)
// stores each once; the event's payload is stored once for all its deliveries.
func TestWriteIsIdempotentAndListedNewestFirst(t *testing.T) {
	testenv.Needs(t)
	ctx := context.Background()
	s := open(t)
	ns := "idempotent"
	now := time.Now().UTC().Truncate(time.Microsecond)
	event := uid("event", 1)
	deliveries := []Delivery{delivery(ns, 1, now.Add(-2*time.Minute), event), delivery(ns, 2, now.Add(-time.Minute), event), delivery(ns, 3, now, "")}
	deliveries[1].Endpoint, deliveries[1].Phase = "globex", "Exhausted"
	payloads := []Payload{{EventUID: event, CreatedAt: now.Add(-3 * time.Minute), Namespace: ns, EventName: "order-1", Payload: json.RawMessage(`{"order":1}`)}}
	for i, want := range []int{3, 0} { // the second write adds nothing, and says so
		added, err := s.Write(ctx, deliveries, payloads)
		if err != nil {
			t.Fatal(err)
		}
		if added != want {
			t.Fatalf("write %d added %d deliveries, want %d", i+1, added, want)
		}
	}
	got, err := s.List(ctx, Filter{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Name != "d-3" || got[2].Name != "d-1" {
		t.Fatalf("listed %d, want d-3, d-2, d-1: %+v", len(got), got)
	}
	if string(got[0].Payload) != `{"direct": 3}` || string(got[2].Payload) != `{"order": 1}` {
		t.Fatalf("payloads %s and %s", got[0].Payload, got[2].Payload)
	}
	if len(got[2].History) != 2 || got[2].History[1].Response != "ok" || got[2].History[0].StatusCode != 503 {
		t.Fatalf("history %+v", got[2].History)
	}
	var payloadRows int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM hookline_payloads WHERE namespace = $1`, ns).Scan(&payloadRows); err != nil {
		t.Fatal(err)
	}
	if payloadRows != 1 {
		t.Fatalf("%d payload rows, want 1", payloadRows)
	}
	for _, c := range []struct {
		f    Filter
		want string
	}{
		{Filter{Namespace: ns, Endpoint: "globex"}, "d-2"},
		{Filter{Namespace: ns, Phase: "Exhausted"}, "d-2"},
		{Filter{Namespace: ns, MessageID: "msg_1"}, "d-1"},
		{Filter{Namespace: ns, Before: now.Add(-30 * time.Second), Limit: 1}, "d-2"},
		{Filter{Namespace: ns, Since: now.Add(-30 * time.Second)}, "d-3"},
	} {
		got, err := s.List(ctx, c.f)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Name != c.want {
			t.Errorf("%+v: got %d rows, want only %s", c.f, len(got), c.want)
		}
	}
	if rows, bytes, err := s.Size(ctx); err != nil || rows < 3 || bytes <= 0 {
		t.Fatalf("size: %d rows, %d bytes (%v)", rows, bytes, err)
	}
	if other, err := s.List(ctx, Filter{Namespace: "elsewhere"}); err != nil || len(other) != 0 {
		t.Fatalf("another namespace sees %d rows (%v)", len(other), err)
	}
}

// Retention drops whole days: a delivery of 40 days ago goes with its partition, one
// of today stays.
func TestDropBeforeDropsWholeDays(t *testing.T) {
	testenv.Needs(t)
	ctx := context.Background()
	s := open(t)
	ns := "retention"
	now := time.Now().UTC()
	if _, err := s.Write(ctx, []Delivery{delivery(ns, 1, now.Add(-40*24*time.Hour), ""), delivery(ns, 2, now, "")}, nil); err != nil {
		t.Fatal(err)
	}
	dropped, err := s.DropBefore(ctx, now.Add(-30*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(dropped) != 1 || dropped[0] != pgdays.Name(deliveriesTable, now.Add(-40*24*time.Hour)) {
		t.Fatalf("dropped %v", dropped)
	}
	got, err := s.List(ctx, Filter{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "d-2" {
		t.Fatalf("left %+v, want d-2 only", got)
	}
	// The day can be written again (a late delivery): its partition is made anew.
	if _, err := s.Write(ctx, []Delivery{delivery(ns, 3, now.Add(-40*24*time.Hour), "")}, nil); err != nil {
		t.Fatal(err)
	}
}
