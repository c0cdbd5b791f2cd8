package crash

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	pgstore "github.com/hookline/hookline/internal/store/postgres"
	"github.com/hookline/hookline/pkg/publish"
)

// Two manager binaries deliver from one PostgreSQL queue; 2,000 messages are published
// through the publish API and one manager is SIGKILLed mid-run. The other takes over
// its claims when their leases end: every message arrives, and the ones that arrive
// twice are at most what the dead one had in flight (at least once, never lost).
func TestReplicaKilledWhileDeliveringFromTheQueueLosesNothing(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	env, dir, bin, kubeconfig, dsnFile := r.env, r.dir, r.bin, r.kubeconfig, r.dsnFile
	queue, err := pgstore.Open(ctx, r.pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer queue.Close()
	const ns = "crash-queue"
	const maxConcurrent = 16
	start := func(name string) (*exec.Cmd, string) {
		log, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		publishAddr := freeAddr(t)
		cmd := exec.Command(bin, "--kubeconfig="+kubeconfig, "--allow-insecure-http", "--allow-private-networks",
			"--watch-namespaces="+ns, "--metrics-bind-address=0", "--health-probe-bind-address="+freeAddr(t),
			"--history-bind-address=0", "--archive-postgres-dsn-file="+dsnFile, "--delivery-store=postgres",
			"--publish-bind-address="+publishAddr, "--delivery-lease=5s", fmt.Sprintf("--max-concurrent-deliveries=%d", maxConcurrent))
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd, publishAddr
	}

	var mu sync.Mutex
	received := map[string]int{}
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * time.Millisecond) // attempts in flight when the kill comes
		mu.Lock()
		received[r.Header.Get("webhook-id")]++
		mu.Unlock()
	}))
	defer recv.Close()
	distinct := func() (n, dups int) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range received {
			dups += c - 1
		}
		return len(received), dups
	}
	c := env.Client
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	_, publishA := start("manager-a")
	victim, _ := start("manager-b")
	if err := c.Create(ctx, &hooklinev1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "acme"},
		Spec: hooklinev1.WebhookEndpointSpec{URL: recv.URL + "/", Events: []string{"*"}}}); err != nil {
		t.Fatal(err)
	}
	poll := func(timeout time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
		t.Helper()
		pollUntil(t, timeout, what, cond)
	}
	waitReady(t, c, ns, "acme")
	token, err := env.ServiceAccountToken(ctx, ns, "producer",
		rbacv1.PolicyRule{APIGroups: []string{"hookline.dev"}, Resources: []string{"webhookevents"}, Verbs: []string{"create"}})
	if err != nil {
		t.Fatal(err)
	}
	producer := publish.Client{URL: "https://" + publishA, Token: token, Attempts: 50}
	poll(30*time.Second, "the publish API answers", func(ctx context.Context) (bool, string) {
		_, err := producer.Publish(ctx, ns, publish.Event{Name: "hello", Type: "order.created", Payload: json.RawMessage(`{}`)})
		return err == nil, fmt.Sprint(err)
	})

	const messages = 2000
	for b := 0; b < messages/100; b++ {
		batch := make([]publish.Event, 100)
		for i := range batch {
			batch[i] = publish.Event{Name: fmt.Sprintf("order-%04d", b*100+i), Type: "order.created", Payload: json.RawMessage(fmt.Sprintf(`{"order":%d}`, b*100+i))}
		}
		if _, err := producer.Publish(ctx, ns, batch...); err != nil {
			t.Fatal(err)
		}
	}
	poll(60*time.Second, "delivery under way", func(context.Context) (bool, string) {
		n, _ := distinct()
		return n >= messages/4, fmt.Sprint(n)
	})
	if err := victim.Process.Kill(); err != nil { // SIGKILL: nothing recorded on the way out
		t.Fatal(err)
	}
	_ = victim.Wait()
	atKill, _ := distinct()
	poll(120*time.Second, "every message delivered and recorded", func(ctx context.Context) (bool, string) {
		ds, err := queue.Deliveries(ctx, ns, 5000)
		finished := 0
		for _, d := range ds {
			if d.FinishedAt != nil {
				finished++
			}
		}
		n, _ := distinct()
		return err == nil && finished == messages+1 && n == messages+1, fmt.Sprintf("%d recorded, %d received (%v)", finished, n, err)
	})
	n, dups := distinct()
	t.Logf("killed with %d of %d messages received; afterwards %d received, %d of them twice (the dead replica could have had %d in flight and up to 320 waiting for a commit)",
		atKill, messages+1, n, dups, maxConcurrent)
	if dups > maxConcurrent+5*64 { // its workers, and the outcomes waiting for a group commit (4 batches buffered, 1 committing)
		t.Fatalf("%d messages arrived twice: more than the dead replica could have had in flight", dups)
	}
}
