package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/testenv"
)

// startArchive starts a PostgreSQL server for the test and returns it with an archive
// store on it; both go when the test ends.
func startArchive(t *testing.T) (*testenv.Postgres, *archive.Store) {
	t.Helper()
	pg, err := testenv.StartPostgres()
	testenv.SkipIfMissing(t, err)
	t.Cleanup(func() { _ = pg.Remove() })
	store, err := archive.New(pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	return pg, store
}

// archivedNames lists the names of ns's archived deliveries.
func archivedNames(ctx context.Context, store *archive.Store, ns string) (map[string]archive.Delivery, error) {
	list, err := store.List(ctx, archive.Filter{Namespace: ns, Limit: 1000})
	if err != nil {
		return nil, err
	}
	out := map[string]archive.Delivery{}
	for _, d := range list {
		out[d.Name] = d
	}
	return out, nil
}

// waitArchivedAndPruned waits until ns has no delivery left in the cluster and want
// rows in the archive (a delivery written twice would show as one row too many) (the database may still be starting: its errors are
// waited out).
func waitArchivedAndPruned(t *testing.T, store *archive.Store, ns string, want int, what string) {
	t.Helper()
	eventually(t, 20*time.Second, what, func(ctx context.Context) (bool, string, error) {
		left, err := deliveriesLeft(ctx, ns)
		if err != nil {
			return false, "", err
		}
		rows, err := store.List(ctx, archive.Filter{Namespace: ns, Limit: 1000})
		if err != nil {
			return false, err.Error(), nil
		}
		return left == 0 && len(rows) == want, fmt.Sprintf("%d in the cluster, %d rows archived", left, len(rows)), nil
	})
}

func deliveriesLeft(ctx context.Context, ns string) (int, error) {
	var list hooklinev1.WebhookDeliveryList
	err := k8s.List(ctx, &list, client.InNamespace(ns))
	return len(list.Items), err
}

// With an archive, retention writes every finished delivery to PostgreSQL (its
// attempts, its event's payload) before deleting it. With the database down nothing
// is pruned and the manager says so; once it is back, the manager catches up.
func TestArchiveBeforePruneAndCatchUp(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	pg, store := startArchive(t)
	conf := testConfig()
	conf.Retention = Retention{Succeeded: time.Second, Failed: time.Second, Interval: 200 * time.Millisecond}
	conf.Archive = store
	conf.Metrics = NewMetrics()
	ns := "own-10"
	ownNamespace(t, ns, conf)
	recv := newReceiver(t)
	createAll(ctx, t, newEndpoint(ns, "acme", recv.URL+"/", "*"))
	waitReady(t, ns, "acme", hooklinev1.ReasonActive)

	for i := range 5 {
		createAll(ctx, t, newEvent(ns, fmt.Sprintf("order-%d", i), "order.created", fmt.Sprintf(`{"order":%d}`, i)))
	}
	createAll(ctx, t, directDelivery(ns, "direct", "acme"))
	waitArchivedAndPruned(t, store, ns, 6, "every delivery archived, then pruned")
	archivedCount(t, conf.Metrics, 6)
	archived, _ := archivedNames(ctx, store, ns)
	fanned := archived[deliveryName("order-3", "acme")]
	if fanned.EventName != "order-3" || string(fanned.Payload) != `{"order": 3}` || fanned.Phase != "Succeeded" || fanned.Attempts != 1 ||
		len(fanned.History) != 1 || fanned.History[0].StatusCode != 200 || fanned.MessageID == "" || fanned.SignatureScheme != "StandardWebhooks" {
		t.Fatalf("archived %+v", fanned)
	}
	if direct := archived["direct"]; direct.EventUID != "" || string(direct.Payload) != `{"delivery": "direct"}` {
		t.Fatalf("archived direct delivery %+v", direct)
	}

	// The database goes down: finished deliveries stay in the cluster.
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	createAll(ctx, t, newEvent(ns, "while-down", "order.created", `{"order":99}`))
	waitDeliveryPhase(t, ns, deliveryName("while-down", "acme"), hooklinev1.PhaseSucceeded, 10*time.Second)
	eventually(t, 10*time.Second, "archive failures counted", func(context.Context) (bool, string, error) {
		n := testutil.ToFloat64(conf.Metrics.archiveErrors)
		return n >= 2 && testutil.ToFloat64(conf.Metrics.archiveUp) == 0, fmt.Sprintf("%v failed writes", n), nil
	})
	// Several walks failed past its 1 s retention, and it is still there.
	if left, err := deliveriesLeft(ctx, ns); err != nil || left != 1 {
		t.Fatalf("%d deliveries in the cluster while the archive is down (%v), want 1: nothing may be pruned", left, err)
	}

	// Back up: it is archived, then pruned.
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	waitArchivedAndPruned(t, store, ns, 7, "caught up")
	archivedCount(t, conf.Metrics, 7)
	if up := testutil.ToFloat64(conf.Metrics.archiveUp); up != 1 {
		t.Fatalf("hookline_archive_up %v after the catch-up, want 1", up)
	}
}

// archivedCount waits for hookline_archived_deliveries_total to say want, and fails
// if it says more.
func archivedCount(t *testing.T, m *Metrics, want float64) {
	t.Helper()
	eventually(t, 5*time.Second, "hookline_archived_deliveries_total", func(context.Context) (bool, string, error) {
		n := testutil.ToFloat64(m.archived)
		if n > want {
			t.Fatalf("hookline_archived_deliveries_total %v, want %v: a delivery was counted twice", n, want)
		}
		return n == want, fmt.Sprint(n), nil
	})
}

// crashAfterWrite is an archive whose manager dies right after its first write: the
// rows are in the database, the deletes never happen.
type crashAfterWrite struct {
	*archive.Store
	once  sync.Once
	crash func()
}

func (c *crashAfterWrite) Write(ctx context.Context, ds []archive.Delivery, ps []archive.Payload) (int, error) {
	if _, err := c.Store.Write(ctx, ds, ps); err != nil {
		return 0, err
	}
	c.once.Do(c.crash)
	return 0, errors.New("the manager died after writing")
}

// A manager that dies between the archive write and the deletes loses nothing and
// duplicates nothing: the next one writes the same rows again (idempotent by UID and
// completion) and deletes them.
func TestArchiveSurvivesACrashBetweenWriteAndDelete(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	_, store := startArchive(t)
	ns := "own-11"
	conf := testConfig()
	conf.Retention = Retention{Succeeded: time.Hour, Failed: time.Hour, Interval: 200 * time.Millisecond}
	stopFirst := ownNamespace(t, ns, conf)
	recv := newReceiver(t)
	createAll(ctx, t, newEndpoint(ns, "acme", recv.URL+"/", "*"))
	waitReady(t, ns, "acme", hooklinev1.ReasonActive)
	const messages = 20
	for i := range messages {
		createAll(ctx, t, newEvent(ns, fmt.Sprintf("order-%d", i), "order.created", fmt.Sprintf(`{"order":%d}`, i)))
	}
	for i := range messages {
		waitEvent(t, ns, fmt.Sprintf("order-%d", i), 20*time.Second, "complete", func(e *hooklinev1.WebhookEvent) bool { return e.Status.CompletionTime != nil })
	}
	stopFirst()

	// Retention now 1 s, so everything is due: the manager archives, then dies.
	conf.Retention.Succeeded = time.Second
	crashed := make(chan struct{})
	dying := &crashAfterWrite{Store: store, crash: func() { close(crashed) }}
	conf.Archive = dying
	stopDying, err := startManager(ctx, restConfig, conf, namespaceOnly(ns))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-crashed:
	case <-time.After(30 * time.Second):
		t.Fatal("the archive was never written")
	}
	stopDying()
	if left, err := deliveriesLeft(ctx, ns); err != nil || left != messages {
		t.Fatalf("%d deliveries in the cluster after the crash (%v), want all %d", left, err, messages)
	}

	conf.Archive = store
	stopNext, err := startManager(ctx, restConfig, conf, namespaceOnly(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopNext)
	waitArchivedAndPruned(t, store, ns, messages, "archived once each, then pruned")
}
