package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/controllers"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/testenv"
)

// The plugin runs against a real API server with the manager running, as users run it.
var (
	k8s        client.Client
	env        *testenv.Env
	adminKube  string
	viewerKube string // may manage endpoints, may not read Secrets
	nsCounter  int
	nsMu       sync.Mutex
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	ctrl.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	var err error
	if env, err = testenv.Start(); err != nil {
		return testenv.Without(m, err)
	}
	defer func() { _ = env.Stop() }()
	k8s = env.Client
	dir, _ := os.MkdirTemp("", "kubectl-hookline-test")
	defer os.RemoveAll(dir)
	if adminKube, err = env.Kubeconfig(dir, "admin", "system:masters"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if viewerKube, err = env.Kubeconfig(dir, "app", "hookline-apps"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0", Cache: controllers.CacheOptions()})
	if err == nil {
		err = controllers.Setup(ctx, mgr, controllers.Config{AllowInsecureHTTP: true, MaxConcurrentDeliveries: 8,
			Sender:    delivery.NewClient(delivery.Options{AllowInsecureHTTP: true, AllowPrivateNetworks: true, UserAgent: "hookline/test"}),
			Retention: controllers.Retention{Succeeded: time.Hour, Failed: time.Hour}})
	}
	if err == nil {
		err = grantApps(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() { _ = mgr.Start(ctx) }()
	return m.Run()
}

// grantApps lets the group hookline-apps manage hookline objects, but not read Secrets.
func grantApps(ctx context.Context) error {
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "hookline-apps"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{"hookline.dev"}, Resources: []string{"*"}, Verbs: []string{"*"}},
		{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"selfsubjectaccessreviews"}, Verbs: []string{"create"}},
	}}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "hookline-apps"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "hookline-apps"},
		Subjects: []rbacv1.Subject{{Kind: "Group", Name: "hookline-apps"}}}
	if err := k8s.Create(ctx, role); err != nil {
		return err
	}
	return k8s.Create(ctx, binding)
}

func newNamespace(t *testing.T) string {
	t.Helper()
	nsMu.Lock()
	nsCounter++
	name := fmt.Sprintf("cli-%d", nsCounter)
	nsMu.Unlock()
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}

type result struct {
	code     int
	out, err string
}

// plugin runs the plugin as a user would, with a kubeconfig and a namespace.
func plugin(kubeconfig, ns, stdin string, args ...string) result {
	var out, errOut bytes.Buffer
	full := append([]string{"--kubeconfig", kubeconfig, "-n", ns, "--timeout", "20s"}, args...)
	code := Main(full, strings.NewReader(stdin), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

func (r result) ok(t *testing.T) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.err)
	}
	return r
}

func endpoints(t *testing.T, ns string) []hooklinev1.WebhookEndpoint {
	t.Helper()
	var list hooklinev1.WebhookEndpointList
	if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func TestEnsureIsIdempotent(t *testing.T) {
	testenv.Needs(t)
	ns := newNamespace(t)
	r := plugin(adminKube, ns, "", "ensure", "--url", "https://Acme.example.com:443/hooks", "--events", "order.created,order.succeeded",
		"--description", "Acme", "--label", "customer=acme").ok(t)
	if !strings.Contains(r.out, "created") {
		t.Fatalf("first run: %q", r.out)
	}
	eps := endpoints(t, ns)
	if len(eps) != 1 || eps[0].Spec.URL != "https://acme.example.com/hooks" || eps[0].Labels["customer"] != "acme" {
		t.Fatalf("endpoints: %+v", eps)
	}
	rv := eps[0].ResourceVersion
	// The same request, the URL spelled differently: nothing changes.
	r = plugin(adminKube, ns, "", "ensure", "--url", "https://acme.example.com/hooks", "--events", "order.created,order.succeeded",
		"--description", "Acme", "--label", "customer=acme").ok(t)
	if !strings.Contains(r.out, "webhookendpoint/"+eps[0].Name+" unchanged") {
		t.Fatalf("second run: %q", r.out)
	}
	if eps = endpoints(t, ns); len(eps) != 1 || eps[0].ResourceVersion != rv {
		t.Fatalf("second run changed the object (%d endpoints, resourceVersion %s -> %s)", len(eps), rv, eps[0].ResourceVersion)
	}
	// A change is applied to the same endpoint.
	r = plugin(adminKube, ns, "", "ensure", "--url", "https://acme.example.com/hooks", "--events", "*", "-o", "yaml").ok(t)
	if !strings.Contains(r.out, "kind: WebhookEndpoint") || !strings.Contains(r.out, "- '*'") {
		t.Fatalf("-o yaml: %s", r.out)
	}
	if eps = endpoints(t, ns); len(eps) != 1 || eps[0].Spec.Events[0] != "*" {
		t.Fatalf("after the change: %+v", eps)
	}
}

func TestEnsureConcurrentRunsMakeOneEndpoint(t *testing.T) {
	testenv.Needs(t)
	ns := newNamespace(t)
	var wg sync.WaitGroup
	results := make([]result, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = plugin(adminKube, ns, "", "ensure", "--url", "https://race.example.com/h", "--events", "a.b")
		}()
	}
	wg.Wait()
	for _, r := range results {
		r.ok(t)
	}
	if eps := endpoints(t, ns); len(eps) != 1 {
		t.Fatalf("%d endpoints after concurrent runs, want 1", len(eps))
	}
}

func TestShowSecretFollowsRBAC(t *testing.T) {
	testenv.Needs(t)
	ns := newNamespace(t)
	r := plugin(adminKube, ns, "", "ensure", "--url", "https://s.example.com/", "--events", "a.b", "--show-secret").ok(t)
	if !strings.Contains(r.out, "signing secret: whsec_") {
		t.Fatalf("admin: %q %q", r.out, r.err)
	}
	r = plugin(viewerKube, ns, "", "ensure", "--url", "https://s.example.com/", "--events", "a.b", "--show-secret").ok(t)
	if strings.Contains(r.out, "whsec_") || !strings.Contains(r.err, "your RBAC does not allow get on secrets/") {
		t.Fatalf("app without Secret access: %q %q", r.out, r.err)
	}
	// --rotate-if-unretrievable rotates when the secret cannot be read.
	ep := endpoints(t, ns)[0]
	r = plugin(viewerKube, ns, "", "ensure", "--url", "https://s.example.com/", "--events", "a.b", "--rotate-if-unretrievable").ok(t)
	if !strings.Contains(r.out, "signing secret rotated") {
		t.Fatalf("rotate-if-unretrievable: %q %q", r.out, r.err)
	}
	if after := endpoints(t, ns)[0]; after.Status.LastHandledRotateSecret == "" || after.Status.SecretHint == ep.Status.SecretHint {
		t.Fatalf("not rotated: %+v", after.Status)
	}
	// An admin can read it, so nothing is rotated.
	before := endpoints(t, ns)[0].Status.LastHandledRotateSecret
	plugin(adminKube, ns, "", "ensure", "--url", "https://s.example.com/", "--events", "a.b", "--rotate-if-unretrievable").ok(t)
	if endpoints(t, ns)[0].Status.LastHandledRotateSecret != before {
		t.Fatal("rotated although the secret could be read")
	}
}

func TestActionsWaitForTheManager(t *testing.T) {
	testenv.Needs(t)
	ns := newNamespace(t)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer recv.Close()
	plugin(adminKube, ns, "", "ensure", "--url", recv.URL+"/", "--events", "order.created", "--name", "ep").ok(t)

	r := plugin(adminKube, ns, "", "rotate", "ep").ok(t)
	if !strings.Contains(r.out, "webhookendpoint/ep rotated") || !strings.Contains(r.out, "signs until 20") {
		t.Fatalf("rotate: %q", r.out)
	}
	plugin(adminKube, ns, "", "enable", "ep").ok(t)
	plugin(adminKube, ns, "", "test", "ep").ok(t)
	var ds hooklinev1.WebhookDeliveryList
	if err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		err := k8s.List(ctx, &ds, client.InNamespace(ns))
		return err == nil && len(ds.Items) == 1 && ds.Items[0].Status.Phase == hooklinev1.PhaseSucceeded, nil
	}); err != nil {
		t.Fatalf("the test delivery: %v %+v", err, ds.Items)
	}
	r = plugin(adminKube, ns, "", "deliveries", "--endpoint", "ep", "--phase", "Succeeded").ok(t)
	if !strings.Contains(r.out, "hookline.test") || !strings.Contains(r.out, "Succeeded") {
		t.Fatalf("deliveries: %q", r.out)
	}
	r = plugin(adminKube, ns, "", "deliveries", "--phase", "Exhausted").ok(t)
	if !strings.Contains(r.err, "No deliveries found") {
		t.Fatalf("deliveries --phase Exhausted: %q %q", r.out, r.err)
	}
}

func TestPublishAndRetry(t *testing.T) {
	testenv.Needs(t)
	ns := newNamespace(t)
	fail := true
	var mu sync.Mutex
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer recv.Close()
	plugin(adminKube, ns, "", "ensure", "--url", recv.URL+"/", "--events", "order.created", "--name", "ep").ok(t)
	ep := endpoints(t, ns)[0]
	if err := k8s.Patch(context.Background(), &ep, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"retry":{"maxAttempts":1}}}`))); err != nil {
		t.Fatal(err)
	}
	file := t.TempDir() + "/payload.json"
	_ = os.WriteFile(file, []byte(`{"order": 1}`), 0o600)
	r := plugin(adminKube, ns, "", "publish", "--type", "order.created", "--data", "@"+file, "--name", "order-1").ok(t)
	if !strings.Contains(r.out, "webhookevent/order-1 published") {
		t.Fatalf("publish: %q", r.out)
	}
	r = plugin(adminKube, ns, "", "publish", "--type", "order.created", "--data", `{"order":1}`, "--name", "order-1").ok(t)
	if !strings.Contains(r.out, "already exists") {
		t.Fatalf("second publish: %q", r.out)
	}
	var ds hooklinev1.WebhookDeliveryList
	waitFor := func(phase hooklinev1.DeliveryPhase) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 15*time.Second, true, func(ctx context.Context) (bool, error) {
			err := k8s.List(ctx, &ds, client.InNamespace(ns))
			return err == nil && len(ds.Items) == 1 && ds.Items[0].Status.Phase == phase, nil
		}); err != nil {
			t.Fatalf("waiting for %s: %+v", phase, ds.Items)
		}
	}
	waitFor(hooklinev1.PhaseExhausted)
	mu.Lock()
	fail = false
	mu.Unlock()
	r = plugin(adminKube, ns, "", "retry", "--endpoint", "ep", "--phase", "Exhausted").ok(t)
	if !strings.Contains(r.out, "retry requested") {
		t.Fatalf("retry: %q", r.out)
	}
	waitFor(hooklinev1.PhaseSucceeded)
}

func TestVerifyACapturedRequest(t *testing.T) {
	testenv.Needs(t)
	ns := newNamespace(t)
	captured := make(chan []byte, 1)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := httputil.DumpRequest(r, true)
		select {
		case captured <- raw:
		default:
		}
	}))
	defer recv.Close()
	r := plugin(adminKube, ns, "", "ensure", "--url", recv.URL+"/", "--events", "*", "--name", "ep", "--show-secret").ok(t)
	secret := strings.TrimSpace(strings.TrimPrefix(r.out[strings.Index(r.out, "signing secret: "):], "signing secret: "))
	plugin(adminKube, ns, "", "test", "ep").ok(t)
	var raw []byte
	select {
	case raw = <-captured:
	case <-time.After(10 * time.Second):
		t.Fatal("no request captured")
	}
	r = plugin(adminKube, ns, string(raw), "verify", "--secret", secret).ok(t)
	if !strings.HasPrefix(r.out, "valid: StandardWebhooks signature verified") {
		t.Fatalf("verify: %q", r.out)
	}
	other := "whsec_" + strings.Repeat("A", 43) + "="
	r = plugin(adminKube, ns, string(raw), "verify", "--secret", other)
	if r.code == 0 || !strings.Contains(r.err, "invalid: no signature matches") {
		t.Fatalf("wrong secret: %+v", r)
	}
	tampered := strings.Replace(string(raw), "hookline.test", "hookline.tost", 1)
	if r = plugin(adminKube, ns, tampered, "verify", "--secret", secret); r.code == 0 {
		t.Fatalf("a changed body verifies: %+v", r)
	}
}

func TestBadInputIsOneClearLine(t *testing.T) {
	testenv.Needs(t)
	ns := newNamespace(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"ensure", "--nope"}, "unknown flag: --nope"},
		{[]string{"ensure", "--url", "ftp://x", "--events", "a.b"}, `--url "ftp://x": scheme must be http or https`},
		{[]string{"ensure", "--url", "https://x.example.com/", "--events", "order.*"}, "wildcard fragments such as order.* are not supported"},
		{[]string{"ensure", "--url", "https://x.example.com/"}, "--events is required"},
		{[]string{"rotate", "missing"}, `webhookendpoints.hookline.dev "missing" not found`},
		{[]string{"publish", "--type", "Order", "--data", "{}"}, `--type "Order"`},
		{[]string{"publish", "--type", "a.b", "--data", "[1]"}, "--data: not a JSON object"},
		{[]string{"deliveries", "--phase", "Done"}, `--phase "Done": one of Pending`},
		{[]string{"verify"}, "--secret or --public-key is required"},
	}
	for _, c := range cases {
		r := plugin(adminKube, ns, "", c.args...)
		lines := strings.Split(strings.TrimSpace(r.err), "\n")
		if r.code == 0 || len(lines) != 1 || !strings.Contains(r.err, c.want) || strings.Contains(r.err, "goroutine") {
			t.Errorf("%v: exit %d, stderr %q; want one line containing %q", c.args, r.code, r.err, c.want)
		}
	}
	r := plugin(adminKube, "no-such-namespace", "", "ensure", "--url", "https://x.example.com/", "--events", "a.b")
	if r.code == 0 || !strings.Contains(r.err, `namespaces "no-such-namespace" not found`) || strings.Count(r.err, "\n") != 1 {
		t.Errorf("missing namespace: %+v", r)
	}
}
