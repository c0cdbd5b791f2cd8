package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/controllers"

	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/callerauth"
	"github.com/hookline/hookline/internal/historyapi"
	"github.com/hookline/hookline/internal/httpsserve"
	"github.com/hookline/hookline/internal/publishapi"
	pgstore "github.com/hookline/hookline/internal/store/postgres"
	"github.com/hookline/hookline/internal/testenv"
)

// `kubectl hookline history` as two users of the same namespace: one who may list
// its deliveries reads the archive's history and one delivery's attempts; the other
// is refused with the reason; no other namespace's delivery shows.
func TestHistoryAsAllowedAndRefusedUsers(t *testing.T) {
	testenv.Needs(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pg, err := testenv.StartPostgres()
	testenv.SkipIfMissing(t, err)
	t.Cleanup(func() { _ = pg.Remove() })
	store, err := archive.Open(ctx, pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	ns, other := newNamespace(t), newNamespace(t)
	now := time.Now().UTC().Truncate(time.Second)
	n := 0
	delivered := func(ns, name, phase string, at time.Time, codes ...int32) archive.Delivery {
		n++
		d := archive.Delivery{UID: fmt.Sprintf("00000000-0000-4000-8000-%012d", n), FinishedAt: at, Namespace: ns, Name: name, Endpoint: "acme", EventType: "order.created",
			MessageID: "msg_" + name, Phase: phase, Attempts: int32(len(codes)), SignatureScheme: "StandardWebhooks", CreatedAt: at.Add(-time.Minute)}
		for i, c := range codes {
			d.History = append(d.History, archive.Attempt{Time: at.Add(time.Duration(i-len(codes)) * time.Second), StatusCode: c, Response: "answer " + string(rune('a'+i))})
		}
		return d
	}
	if _, err := store.Write(ctx, []archive.Delivery{
		delivered(ns, "order-1", "Succeeded", now.Add(-time.Hour), 503, 200),
		delivered(ns, "order-2", "Exhausted", now.Add(-time.Minute), 500, 500, 500),
		delivered(other, "order-9", "Succeeded", now, 200),
	}, nil); err != nil {
		t.Fatal(err)
	}
	clientset, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	listening := make(chan string, 1)
	srv := &httpsserve.Server{Addr: "127.0.0.1:0", Handler: historyapi.Handler{Archive: store, Auth: historyapi.KubeAuth{KubeAuth: callerauth.KubeAuth{Client: clientset}}}, Listening: listening}
	go func() { _ = srv.Start(ctx) }()
	url := "https://" + <-listening

	dir := t.TempDir()
	kubeconfig := func(name string, rules ...rbacv1.PolicyRule) string {
		return serviceAccountKubeconfig(t, dir, ns, name, rules...)
	}
	support := kubeconfig("support", rbacv1.PolicyRule{APIGroups: []string{"hookline.dev"}, Resources: []string{"webhookdeliveries"}, Verbs: []string{"list"}})
	stranger := kubeconfig("stranger")
	direct := []string{"--history-url", url, "--history-insecure-skip-tls-verify"}

	r := plugin(support, ns, "", append([]string{"history"}, direct...)...).ok(t)
	t.Logf("kubectl hookline -n %s history\n%s", ns, r.out)
	lines := strings.Split(strings.TrimSpace(r.out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "order-2") || !strings.HasPrefix(lines[2], "order-1") || strings.Contains(r.out, "order-9") {
		t.Fatalf("history:\n%s", r.out)
	}
	r = plugin(support, ns, "", append([]string{"history", "--phase", "Exhausted", "-o", "json"}, direct...)...).ok(t)
	var page historyapi.Page
	if err := json.Unmarshal([]byte(r.out), &page); err != nil || len(page.Items) != 1 || page.Items[0].Name != "order-2" {
		t.Fatalf("history --phase Exhausted -o json: %v\n%s", err, r.out)
	}
	r = plugin(support, ns, "", append([]string{"history", "show", "order-1"}, direct...)...).ok(t)
	t.Logf("kubectl hookline -n %s history show order-1\n%s", ns, r.out)
	if !strings.Contains(r.out, "ATTEMPTS") || !strings.Contains(r.out, "answer a") || !strings.Contains(r.out, "msg_order-1") {
		t.Fatalf("history show:\n%s", r.out)
	}

	r = plugin(stranger, ns, "", append([]string{"history"}, direct...)...)
	t.Logf("as a user without list webhookdeliveries: %s", r.err)
	if r.code != 1 || !strings.Contains(r.err, "(403)") || !strings.Contains(r.err, "may not list webhookdeliveries.hookline.dev in namespace") {
		t.Fatalf("a user without list webhookdeliveries: exit %d\n%s%s", r.code, r.out, r.err)
	}
	r = plugin(support, other, "", append([]string{"history"}, direct...)...)
	if r.code != 1 || !strings.Contains(r.err, "(403)") || strings.Contains(r.out, "order-9") {
		t.Fatalf("another namespace: exit %d\n%s%s", r.code, r.out, r.err)
	}
	// A certificate user (the admin here) has no token to pass on: a clear refusal.
	r = plugin(adminKube, ns, "", append([]string{"history"}, direct...)...)
	if r.code != 1 || !strings.Contains(r.err, "needs a bearer token") {
		t.Fatalf("a certificate user: exit %d\n%s", r.code, r.err)
	}
}

// `kubectl hookline publish --publish-url` through the PostgreSQL store's publish API,
// as a ServiceAccount allowed to create webhookevents and as one that is not.
func TestPublishThroughTheAPI(t *testing.T) {
	testenv.Needs(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	queue := startQueue(t)
	ns := newNamespace(t)
	if err := k8s.Create(ctx, &hooklinev1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "acme"},
		Spec: hooklinev1.WebhookEndpointSpec{URL: "https://receiver.example/", Events: []string{"*"}}}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		var ep hooklinev1.WebhookEndpoint
		return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "acme"}, &ep) == nil && ep.AcceptsDeliveries(), nil
	}); err != nil {
		t.Fatalf("acme not Ready: %v", err)
	}
	clientset, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	listening := make(chan string, 1)
	srv := &httpsserve.Server{Addr: "127.0.0.1:0", Listening: listening, Handler: publishapi.Handler{
		Auth:      &callerauth.Cached{Reviewer: callerauth.KubeAuth{Client: clientset}, TTL: time.Second},
		Publisher: controllers.QueuePublisher{Endpoints: k8s, Queue: queue},
	}}
	go func() { _ = srv.Start(ctx) }()
	api := []string{"--publish-url", "https://" + <-listening, "--publish-insecure-skip-tls-verify"}
	dir := t.TempDir()
	kubeconfig := func(name string, rules ...rbacv1.PolicyRule) string {
		return serviceAccountKubeconfig(t, dir, ns, name, rules...)
	}
	producer := kubeconfig("producer", rbacv1.PolicyRule{APIGroups: []string{"hookline.dev"}, Resources: []string{"webhookevents"}, Verbs: []string{"create"}})
	stranger := kubeconfig("stranger")

	r := plugin(producer, ns, "", append([]string{"publish", "--type", "order.created", "--data", `{"order":1}`, "--name", "order-1"}, api...)...).ok(t)
	if !strings.Contains(r.out, "event order-1 published: 1 deliveries queued") {
		t.Fatalf("publish: %s", r.out)
	}
	r = plugin(producer, ns, "", append([]string{"publish", "--type", "order.created", "--data", `{"order":1}`, "--name", "order-1"}, api...)...).ok(t)
	if !strings.Contains(r.out, "nothing queued") {
		t.Fatalf("publishing the same name again: %s", r.out)
	}
	ds, err := queue.Deliveries(ctx, ns, 10)
	if err != nil || len(ds) != 1 || ds[0].EventName != "order-1" || ds[0].Endpoint != "acme" {
		t.Fatalf("queued %+v (%v)", ds, err)
	}
	r = plugin(stranger, ns, "", append([]string{"publish", "--type", "order.created", "--data", `{"order":2}`}, api...)...)
	if r.code != 1 || !strings.Contains(r.err, "(403)") || !strings.Contains(r.err, "may not create webhookevents.hookline.dev") {
		t.Fatalf("a ServiceAccount without the Role: exit %d\n%s%s", r.code, r.out, r.err)
	}
}

// serviceAccountKubeconfig makes a ServiceAccount in ns granted rules (none: nothing)
// and writes a kubeconfig that authenticates as it with a token.
func serviceAccountKubeconfig(t *testing.T, dir, ns, name string, rules ...rbacv1.PolicyRule) string {
	t.Helper()
	tok, err := env.ServiceAccountToken(context.Background(), ns, name, rules...)
	if err != nil {
		t.Fatal(err)
	}
	path, err := env.TokenKubeconfig(dir, name, tok)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// `kubectl hookline retry --postgres` starts an Exhausted delivery of the PostgreSQL
// store again, through the history API, as a user allowed to patch deliveries; a
// user who is not is refused with the reason, and a delivery that succeeded is left.
func TestRetryInThePostgresStore(t *testing.T) {
	testenv.Needs(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	queue := startQueue(t)
	ns := newNamespace(t)
	if _, err := queue.Publish(ctx, []pgstore.Event{{Namespace: ns, Name: "order-1", UID: "u1", Type: "order.created",
		Payload: []byte(`{}`), MessageID: "msg_u1", Endpoints: []string{"acme", "globex"}}}); err != nil {
		t.Fatal(err)
	}
	claims, err := queue.Claim(ctx, "test", 10, time.Minute)
	if err != nil || len(claims) != 2 {
		t.Fatalf("claimed %d (%v)", len(claims), err)
	}
	var outcomes []pgstore.Outcome
	for _, c := range claims {
		state := pgstore.StateSucceeded
		if c.Endpoint == "globex" {
			state = pgstore.StateExhausted
		}
		outcomes = append(outcomes, pgstore.Outcome{Ref: c.Ref, State: state, Attempts: 3})
	}
	if _, err := queue.Record(ctx, "test", outcomes); err != nil {
		t.Fatal(err)
	}
	clientset, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	listening := make(chan string, 1)
	srv := &httpsserve.Server{Addr: "127.0.0.1:0", Listening: listening, Handler: historyapi.Handler{Archive: queue, Retrier: queue,
		Auth: historyapi.KubeAuth{KubeAuth: callerauth.KubeAuth{Client: clientset}}}}
	go func() { _ = srv.Start(ctx) }()
	direct := []string{"--postgres", "--history-url", "https://" + <-listening, "--history-insecure-skip-tls-verify"}
	dir := t.TempDir()
	operator := serviceAccountKubeconfig(t, dir, ns, "operator",
		rbacv1.PolicyRule{APIGroups: []string{"hookline.dev"}, Resources: []string{"webhookdeliveries"}, Verbs: []string{"list", "patch"}})
	reader := serviceAccountKubeconfig(t, dir, ns, "reader",
		rbacv1.PolicyRule{APIGroups: []string{"hookline.dev"}, Resources: []string{"webhookdeliveries"}, Verbs: []string{"list"}})
	exhausted, succeeded := hooklinev1.DeliveryName("order-1", "globex"), hooklinev1.DeliveryName("order-1", "acme")

	r := plugin(reader, ns, "", append([]string{"retry", exhausted}, direct...)...)
	if r.code != 1 || !strings.Contains(r.err, "(403)") || !strings.Contains(r.err, "may not patch webhookdeliveries.hookline.dev") {
		t.Fatalf("a user who may only list: exit %d\n%s%s", r.code, r.out, r.err)
	}
	// deliveries lists the queue as it lists WebhookDeliveries.
	r = plugin(reader, ns, "", append([]string{"deliveries", "--phase", "Exhausted"}, direct...)...).ok(t)
	lines := strings.Split(strings.TrimSpace(r.out), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME ENDPOINT TYPE PHASE ATTEMPTS CODE NEXT ATTEMPT AGE" ||
		strings.Join(strings.Fields(lines[1])[:6], " ") != exhausted+" globex order.created Exhausted 3 0" {
		t.Fatalf("deliveries --postgres --phase Exhausted:\n%s", r.out)
	}
	r = plugin(reader, ns, "", append([]string{"deliveries", "-o", "json"}, direct...)...).ok(t)
	var list hooklinev1.WebhookDeliveryList
	if err := json.Unmarshal([]byte(r.out), &list); err != nil || len(list.Items) != 2 {
		t.Fatalf("deliveries --postgres -o json: %d items (%v)\n%s", len(list.Items), err, r.out)
	}
	for _, d := range list.Items {
		if d.Kind != "WebhookDelivery" || d.Spec.EventRef == nil || d.Spec.EventRef.Name != "order-1" || d.Status.MessageID != "msg_u1" || d.Status.CompletionTime == nil {
			t.Fatalf("a queued delivery as a WebhookDelivery: %+v", d)
		}
	}
	// Selected by endpoint and phase, as in the etcd store.
	r = plugin(operator, ns, "", append([]string{"retry", "--endpoint", "globex", "--phase", "Exhausted"}, direct...)...).ok(t)
	if !strings.Contains(r.out, "delivery "+exhausted+" retry requested") {
		t.Fatalf("retry --endpoint globex --phase Exhausted:\n%s", r.out)
	}
	r = plugin(operator, ns, "", append([]string{"deliveries", "--endpoint", "globex"}, direct...)...).ok(t)
	if !strings.Contains(r.out, " Pending ") || !strings.Contains(r.out, " in ") {
		t.Fatalf("the retried delivery, listed:\n%s", r.out)
	}
	r = plugin(operator, ns, "", append([]string{"retry", exhausted, succeeded}, direct...)...).ok(t)
	if !strings.Contains(r.out, "delivery "+exhausted+": not Failed or Exhausted") || !strings.Contains(r.out, "delivery "+succeeded+": not Failed or Exhausted") {
		t.Fatalf("retry:\n%s", r.out)
	}
	again, err := queue.Claim(ctx, "test-2", 10, time.Minute)
	if err != nil || len(again) != 1 || again[0].Endpoint != "globex" || again[0].Attempts != 0 {
		t.Fatalf("claimed after the retry: %+v (%v)", again, err)
	}
	// history reads the queue the same way.
	r = plugin(operator, ns, "", append([]string{"history", "show", succeeded}, direct[1:]...)...).ok(t)
	if !strings.Contains(r.out, "Succeeded") {
		t.Fatalf("history show in the PostgreSQL store:\n%s", r.out)
	}
}

// startQueue starts PostgreSQL with the delivery queue on it; both go when the test ends.
func startQueue(t *testing.T) *pgstore.Queue {
	t.Helper()
	pg, err := testenv.StartPostgres()
	testenv.SkipIfMissing(t, err)
	t.Cleanup(func() { _ = pg.Remove() })
	queue, err := pgstore.Open(context.Background(), pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(queue.Close)
	return queue
}
