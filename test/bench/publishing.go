package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/hookline/hookline/internal/delivery"
	wire "github.com/hookline/hookline/internal/message"
	"github.com/hookline/hookline/internal/signing"
	"github.com/hookline/hookline/internal/testenv"
	"github.com/hookline/hookline/pkg/publish"
)

// publishBatch is how many events one publish request carries in the benchmark.
const publishBatch = 200

// runPublishScenario publishes events through the publish API of a manager on the
// PostgreSQL store, 1 KiB payloads in batches from `parallel` producers, and measures
// the deliveries/s at the receiver and the manager's API writes per delivery.
func runPublishScenario(ctx context.Context, env *testenv.Env, mgr *managerProcess, recv *receiver, base, ns, publishURL string,
	events, endpoints int) (scenarioResult, error) {
	res := scenarioResult{Events: events, Endpoints: endpoints, Deliveries: events * endpoints}
	if err := createEndpoints(ctx, env.Client, base, ns, endpoints); err != nil {
		return res, err
	}
	token, err := env.ServiceAccountToken(ctx, ns, "producer",
		rbacv1.PolicyRule{APIGroups: []string{"hookline.dev"}, Resources: []string{"webhookevents"}, Verbs: []string{"create"}})
	if err != nil {
		return res, err
	}
	producer := publish.Client{URL: publishURL, Token: token}
	before, err := mgr.metrics()
	if err != nil {
		return res, err
	}
	writesBefore, err := hooklineWrites(ctx, env)
	if err != nil {
		return res, err
	}
	payload := json.RawMessage(`{"order":1,"note":"` + strings.Repeat("x", 1000) + `"}`)
	start := time.Now()
	batches := (events + publishBatch - 1) / publishBatch
	err = inParallel(batches, func(b int) error {
		var batch []publish.Event
		for i := b * publishBatch; i < min((b+1)*publishBatch, events); i++ {
			batch = append(batch, publish.Event{Name: fmt.Sprintf("order-%06d", i), Type: "order.created", Payload: payload})
		}
		_, err := producer.Publish(ctx, ns, batch...)
		return err
	})
	if err != nil {
		return res, err
	}
	want := res.Deliveries
	prefix := "/" + ns + "/"
	if err := recv.waitFor(ctx, prefix, want); err != nil {
		return res, err
	}
	got, _ := recv.received(prefix)
	var last time.Time
	for _, at := range got {
		if at.After(last) {
			last = at
		}
	}
	res.DeliveriesPerSec = float64(len(got)) / last.Sub(start).Seconds()
	after, err := mgr.metrics()
	if err != nil {
		return res, err
	}
	res.RequestsPerMsg = map[string]float64{}
	for _, verb := range []string{"POST", "PUT", "PATCH", "DELETE"} {
		if d := after.requests(verb) - before.requests(verb); d > 0 {
			res.RequestsPerMsg[verb] = d / float64(want)
		}
	}
	// Writes that reach etcd: the API server's own count of writes to hookline's
	// objects (the manager's POSTs also carry TokenReviews and SubjectAccessReviews,
	// which store nothing).
	writesAfter, err := hooklineWrites(ctx, env)
	if err != nil {
		return res, err
	}
	res.WritesPerMsg = (writesAfter - writesBefore) / float64(want)
	return res, nil
}

// hooklineWrites is the API server's count of writes to hookline.dev objects
// (apiserver_request_total), read from its metrics endpoint as an administrator.
func hooklineWrites(ctx context.Context, env *testenv.Env) (float64, error) {
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return 0, err
	}
	raw, err := cs.RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return 0, err
	}
	total := 0.0
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `group="hookline.dev"`) {
			continue
		}
		for _, verb := range []string{"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"} {
			if strings.Contains(line, `verb="`+verb+`"`) {
				f := strings.Fields(line)
				v, _ := strconv.ParseFloat(f[len(f)-1], 64)
				total += v
			}
		}
	}
	return total, nil
}

// measureCeiling signs and POSTs 1 KiB bodies to the loopback receiver as fast as the
// manager's default connection cap (64 attempts at once) allows, nothing stored: the
// most any store could deliver on this machine.
func measureCeiling(ctx context.Context, base string, count int) (float64, error) {
	key, err := signing.ParseSecret("whsec_" + strings.Repeat("A", 43) + "=")
	if err != nil {
		return 0, err
	}
	sender := delivery.NewClient(delivery.Options{AllowInsecureHTTP: true, AllowPrivateNetworks: true, UserAgent: "hookline/bench", MaxOpenConns: 64})
	body, err := wire.Body("order.created", time.Now(), []byte(`{"order":1,"note":"`+strings.Repeat("x", 1000)+`"}`))
	if err != nil {
		return 0, err
	}
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range 64 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(count) {
					return
				}
				req, _, err := wire.Build(wire.Attempt{ID: fmt.Sprintf("msg_ceiling%d", i), Body: body, URL: base + "/ceiling/0",
					Signer: signing.Signer{Scheme: signing.StandardWebhooks}, Keys: []signing.Key{key}, Now: time.Now(), Timeout: 10 * time.Second})
				if err != nil || sender.Send(ctx, req).StatusCode != http.StatusNoContent {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return 0, fmt.Errorf("the ceiling: %d of %d requests failed", n, count)
	}
	return float64(count) / time.Since(start).Seconds(), nil
}
