// Package crash kills the manager binary with SIGKILL while it archives and prunes,
// and checks that the next one finishes the work: nothing lost, nothing twice.
package crash

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeobj "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/testenv"
)

// buildManager builds the manager binary once per test binary, with the race
// detector like the tests (so that it links what `make test` compiled already).
func buildManager(t *testing.T, _ string) string {
	t.Helper()
	managerOnce.Do(func() {
		_, here, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(here), "..", "..")
		dir, err := os.MkdirTemp("", "hookline-crash-")
		if err != nil {
			managerErr = err
			return
		}
		managerBin = filepath.Join(dir, "manager")
		cmd := exec.Command("go", "build", "-race", "-o", managerBin, ".")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			managerErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if managerErr != nil {
		t.Fatal(managerErr)
	}
	return managerBin
}

// The binary built once for every test of the package (removed with the temp dir
// at the end by the system; it is not worth a TestMain).
var (
	managerOnce sync.Once
	managerBin  string
	managerErr  error
)

// rig is what every test here needs: a control plane, PostgreSQL, the manager binary,
// an administrator's kubeconfig and a DSN file; all go when the test ends.
type rig struct {
	env                 *testenv.Env
	pg                  *testenv.Postgres
	dir, bin            string
	kubeconfig, dsnFile string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	testenv.Needs(t)
	env, err := testenv.Start()
	testenv.SkipIfMissing(t, err)
	t.Cleanup(func() { _ = env.Stop() })
	pg, err := testenv.StartPostgres()
	testenv.SkipIfMissing(t, err)
	t.Cleanup(func() { _ = pg.Remove() })
	r := &rig{env: env, pg: pg, dir: t.TempDir()}
	r.bin = buildManager(t, r.dir)
	if r.kubeconfig, err = env.Kubeconfig(r.dir, "manager", "system:masters"); err != nil {
		t.Fatal(err)
	}
	r.dsnFile = filepath.Join(r.dir, "dsn")
	if err := os.WriteFile(r.dsnFile, []byte(pg.DSN), 0o600); err != nil {
		t.Fatal(err)
	}
	return r
}

// pollUntil polls cond until it holds, or fails the test with what it saw last.
func pollUntil(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	last := ""
	if err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		ok, state := cond(ctx)
		last = state
		return ok, nil
	}); err != nil {
		t.Fatalf("%s: %v (last seen: %s)", what, err, last)
	}
}

// waitReady waits for an endpoint to be Ready.
func waitReady(t *testing.T, c client.Client, ns, name string) {
	t.Helper()
	pollUntil(t, 60*time.Second, "endpoint "+name+" Ready", func(ctx context.Context) (bool, string) {
		var ep hooklinev1.WebhookEndpoint
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &ep)
		return err == nil && meta.IsStatusConditionTrue(ep.Status.Conditions, hooklinev1.ConditionReady), fmt.Sprint(err)
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// The manager is SIGKILLed in the middle of archiving and pruning 300 messages; a new
// one archives what was left (the rows already written are written again, harmlessly)
// and prunes it. Every delivery is in the archive exactly once, none in the cluster.
func TestManagerKilledWhileArchivingLosesAndDuplicatesNothing(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	env, dir, bin, kubeconfig, dsnFile := r.env, r.dir, r.bin, r.kubeconfig, r.dsnFile
	store, err := archive.Open(ctx, r.pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	const ns = "crash"
	start := func() *exec.Cmd {
		log, err := os.Create(filepath.Join(dir, fmt.Sprintf("manager-%d.log", time.Now().UnixNano())))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--kubeconfig="+kubeconfig, "--allow-insecure-http", "--allow-private-networks",
			"--watch-namespaces="+ns, "--metrics-bind-address=0", "--health-probe-bind-address="+freeAddr(t),
			"--history-bind-address=0", "--delivery-retention-succeeded=1s", "--archive-postgres-dsn-file="+dsnFile)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}

	var mu sync.Mutex
	received := map[string]bool{}
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		received[r.Header.Get("webhook-id")] = true
		mu.Unlock()
	}))
	defer recv.Close()
	c := env.Client
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	first := start()
	if err := c.Create(ctx, &hooklinev1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "acme"},
		Spec: hooklinev1.WebhookEndpointSpec{URL: recv.URL + "/", Events: []string{"*"}}}); err != nil {
		t.Fatal(err)
	}
	poll := func(timeout time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
		t.Helper()
		pollUntil(t, timeout, what, cond)
	}
	waitReady(t, c, ns, "acme")

	const messages = 300
	for i := range messages {
		ev := &hooklinev1.WebhookEvent{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("order-%03d", i)},
			Spec: hooklinev1.WebhookEventSpec{Type: "order.created", Payload: runtimeobj.RawExtension{Raw: []byte(fmt.Sprintf(`{"order":%d}`, i))}}}
		if err := c.Create(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	counts := func(ctx context.Context) (inCluster, archived int, err error) {
		var list hooklinev1.WebhookDeliveryList
		if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return 0, 0, err
		}
		rows, err := store.List(ctx, archive.Filter{Namespace: ns, Limit: 500})
		return len(list.Items), len(rows), err
	}
	poll(120*time.Second, "archiving and pruning under way", func(ctx context.Context) (bool, string) {
		inCluster, archived, err := counts(ctx)
		return err == nil && archived >= 20 && inCluster >= 20, fmt.Sprintf("%d in the cluster, %d archived (%v)", inCluster, archived, err)
	})
	if err := first.Process.Kill(); err != nil { // SIGKILL: no deferred cleanup runs
		t.Fatal(err)
	}
	_ = first.Wait()
	inCluster, archived, _ := counts(ctx)
	t.Logf("killed with %d deliveries in the cluster and %d archived", inCluster, archived)

	start()
	poll(180*time.Second, "everything archived once and pruned", func(ctx context.Context) (bool, string) {
		inCluster, archived, err := counts(ctx)
		return err == nil && inCluster == 0 && archived == messages, fmt.Sprintf("%d in the cluster, %d archived (%v)", inCluster, archived, err)
	})
	rows, err := store.List(ctx, archive.Filter{Namespace: ns, Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range rows {
		if seen[r.UID] {
			t.Fatalf("delivery %s archived twice", r.Name)
		}
		seen[r.UID] = true
		if r.Phase != "Succeeded" || len(r.History) == 0 || string(r.Payload) == "" {
			t.Fatalf("archived %+v", r)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(received) != messages {
		t.Fatalf("the receiver got %d distinct messages, want %d", len(received), messages)
	}
}
