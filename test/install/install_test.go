// Package install checks the rendered install (config/default) against a real API
// server: every object valid for Kubernetes 1.37, the security baseline, and RBAC that is
// enough for the manager to deliver a webhook and no broader.
package install

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/controllers"
	"github.com/hookline/hookline/internal/admission/serving"
	"github.com/hookline/hookline/internal/delivery"
	"github.com/hookline/hookline/internal/testenv"
)

const (
	installNamespace = "hookline-system"
	serviceAccount   = "system:serviceaccount:hookline-system:hookline-controller-manager"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	var err error
	if env, err = testenv.Start(); err != nil {
		os.Exit(testenv.Without(m, err))
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

// render runs the pinned kustomize on config/default.
func render(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	return renderDir(t, "default")
}

// renderDir runs the pinned kustomize on a directory of config/.
func renderDir(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	return decodeObjects(t, runTool(t, "kustomize", "build", filepath.Join(repoRoot, "config", dir)))
}

var repoRoot, _ = filepath.Abs(filepath.Join("..", ".."))

// runTool runs a pinned tool of bin/ and returns its standard output.
func runTool(t *testing.T, name string, args ...string) *bytes.Buffer {
	t.Helper()
	tool, err := testenv.Tool(name)
	testenv.SkipIfMissing(t, err)
	var out, stderr bytes.Buffer
	cmd := exec.Command(tool, args...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	// Helm keeps caches and config under these; the test gives it a place of its own.
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, args[0], err, stderr.String())
	}
	return &out
}

// decodeObjects reads a stream of YAML documents as objects.
func decodeObjects(t *testing.T, r io.Reader) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	return objs
}

func byKind(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

func convert[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	var v T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

func ensureNamespace(t *testing.T, name string) {
	t.Helper()
	testenv.Needs(t) // what follows is checked against the API server
	err := env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
}

func TestRenderedInstallIsValidForKubernetes137(t *testing.T) {
	testenv.Needs(t)
	ctx := context.Background()
	objs := render(t)
	ensureNamespace(t, installNamespace)
	for _, o := range objs {
		// Server-side apply as a dry run: the API server validates every object.
		if err := env.Client.Patch(ctx, o.DeepCopy(), client.Apply, client.FieldOwner("install-test"), client.DryRunAll, client.ForceOwnership); err != nil {
			t.Errorf("%s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	want := map[string]int{"CustomResourceDefinition": 3, "Deployment": 1, "ServiceAccount": 1, "Service": 2, "PodDisruptionBudget": 1, "Namespace": 1,
		"ValidatingWebhookConfiguration": 1, "Secret": 1, "FlowSchema": 1, "PriorityLevelConfiguration": 1}
	for kind, n := range want {
		if got := len(byKind(objs, kind)); got != n {
			t.Errorf("%d %s objects rendered, want %d", got, kind, n)
		}
	}
	// The manager's own priority level applies to the manager's ServiceAccount.
	fs := byKind(objs, "FlowSchema")[0]
	rules, _, _ := unstructured.NestedSlice(fs.Object, "spec", "rules")
	subjects, _, _ := unstructured.NestedSlice(rules[0].(map[string]any), "subjects")
	sa, _, _ := unstructured.NestedStringMap(subjects[0].(map[string]any), "serviceAccount")
	if "system:serviceaccount:"+sa["namespace"]+":"+sa["name"] != serviceAccount {
		t.Errorf("FlowSchema subject %v, want %s", sa, serviceAccount)
	}
	if level, _, _ := unstructured.NestedString(fs.Object, "spec", "priorityLevelConfiguration", "name"); level != byKind(objs, "PriorityLevelConfiguration")[0].GetName() {
		t.Errorf("FlowSchema refers to priority level %q", level)
	}
}

// The optional components render; the NetworkPolicy is validated by the API server, the
// Prometheus Operator's kinds only by shape (their CRDs are not part of envtest).
func TestOptionalComponents(t *testing.T) {
	testenv.Needs(t)
	objs := renderDir(t, "overlays/with-extras")
	ensureNamespace(t, installNamespace)
	for _, o := range byKind(objs, "NetworkPolicy") {
		if err := env.Client.Patch(context.Background(), o.DeepCopy(), client.Apply, client.FieldOwner("install-test"), client.DryRunAll); err != nil {
			t.Errorf("NetworkPolicy: %v", err)
		}
	}
	for kind, n := range map[string]int{"NetworkPolicy": 1, "ServiceMonitor": 1, "PrometheusRule": 1, "Deployment": 1} {
		if got := len(byKind(objs, kind)); got != n {
			t.Errorf("%d %s rendered, want %d", got, kind, n)
		}
	}

	// cert-manager instead of the manager's own rotator.
	cm := renderDir(t, "overlays/with-cert-manager")
	for kind, n := range map[string]int{"Certificate": 1, "Issuer": 1, "Secret": 0, "Role": 1, "ValidatingWebhookConfiguration": 1} {
		if got := len(byKind(cm, kind)); got != n {
			t.Errorf("with cert-manager: %d %s rendered, want %d", got, kind, n)
		}
	}
	pod := convert[appsv1.Deployment](t, byKind(cm, "Deployment")[0]).Spec.Template.Spec
	if !contains(pod.Containers[0].Args, "--admission-webhook=cert-manager") || pod.Volumes[0].Secret.SecretName != "hookline-webhook-server-cert" {
		t.Errorf("with cert-manager: args %v, volumes %+v", pod.Containers[0].Args, pod.Volumes)
	}
	if got := byKind(cm, "ValidatingWebhookConfiguration")[0].GetAnnotations()["cert-manager.io/inject-ca-from"]; got != "hookline-system/hookline-serving-cert" {
		t.Errorf("with cert-manager: inject-ca-from %q", got)
	}
	for _, o := range append(byKind(objs, "ServiceMonitor"), byKind(objs, "PrometheusRule")...) {
		if o.GetNamespace() != installNamespace {
			t.Errorf("%s in namespace %q", o.GetKind(), o.GetNamespace())
		}
	}
}

func TestManagerDeploymentMeetsTheRestrictedBaseline(t *testing.T) {
	testenv.Needs(t)
	d := convert[appsv1.Deployment](t, byKind(render(t), "Deployment")[0])
	if d.Namespace != installNamespace || d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("namespace %s, replicas %v; want hookline-system and 2", d.Namespace, d.Spec.Replicas)
	}
	pod := d.Spec.Template.Spec
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot ||
		pod.SecurityContext.SeccompProfile == nil || pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext: %+v", pod.SecurityContext)
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil ||
		!*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("container securityContext: %+v", sc)
	}
	if c.LivenessProbe == nil || c.ReadinessProbe == nil || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("probes or resources missing: %+v", c)
	}
	if len(c.Env) == 0 || c.Env[0].Name != "GOMEMLIMIT" || c.Env[0].ValueFrom == nil || c.Env[0].ValueFrom.ResourceFieldRef == nil {
		t.Errorf("env %+v: GOMEMLIMIT should follow the memory limit", c.Env)
	}
	if !strings.Contains(strings.Join(c.Args, " "), "--leader-elect") {
		t.Errorf("args %v: two replicas need --leader-elect", c.Args)
	}
	if !contains(c.Args, "--admission-webhook=self-signed") || len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != "/tmp/k8s-webhook-server/serving-certs" ||
		len(pod.Volumes) != 1 || pod.Volumes[0].Secret == nil || pod.Volumes[0].Secret.SecretName != "hookline-webhook-server-cert" {
		t.Errorf("the admission webhook's certificate must be provisioned by the manager and mounted read-only: args %v, mounts %+v, volumes %+v", c.Args, c.VolumeMounts, pod.Volumes)
	}
	ns := convert[corev1.Namespace](t, byKind(render(t), "Namespace")[0])
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace labels %v: want Pod Security restricted enforced", ns.Labels)
	}
}

// rbacObjects are the rendered RBAC objects and the ServiceAccount.
func rbacObjects(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding":
			out = append(out, o)
		}
	}
	return out
}

func TestRenderedRBACIsNoBroaderThanNeeded(t *testing.T) {
	testenv.Needs(t)
	assertRBACNarrow(t, render(t))
}

// assertRBACNarrow: no "*" anywhere, and no Secret write bound cluster-wide.
func assertRBACNarrow(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	clusterBound := map[string]bool{}
	for _, u := range byKind(objs, "ClusterRoleBinding") {
		clusterBound[convert[rbacv1.ClusterRoleBinding](t, u).RoleRef.Name] = true
	}
	for _, u := range append(byKind(objs, "ClusterRole"), byKind(objs, "Role")...) {
		role := convert[rbacv1.ClusterRole](t, u)
		for _, rule := range role.Rules {
			for _, v := range append(append([]string{}, rule.Verbs...), append(rule.Resources, rule.APIGroups...)...) {
				if v == "*" {
					t.Errorf("%s %s grants %q: %+v", u.GetKind(), role.Name, v, rule)
				}
			}
			writesSecrets := contains(rule.Resources, "secrets") && (contains(rule.Verbs, "create") || contains(rule.Verbs, "update") ||
				contains(rule.Verbs, "patch") || contains(rule.Verbs, "delete"))
			if writesSecrets && u.GetKind() == "ClusterRole" && clusterBound[role.Name] {
				t.Errorf("ClusterRole %s writes Secrets and is bound cluster-wide", role.Name)
			}
		}
	}
}

// The manager runs under the rendered ServiceAccount's permissions (impersonation) and
// delivers a webhook in a namespace that granted it Secret writes; a namespace that did
// not gets a clear condition.
func TestManagerRunsUnderTheRenderedRBAC(t *testing.T) {
	testenv.Needs(t)
	ctx := context.Background()
	ensureNamespace(t, installNamespace)
	rendered := render(t)
	// The webhook registration is applied with failurePolicy Ignore here: envtest has no
	// Service network to reach it, and this test is about the permissions.
	registration := byKind(rendered, "ValidatingWebhookConfiguration")[0].DeepCopy()
	webhooks, _, _ := unstructured.NestedSlice(registration.Object, "webhooks")
	for i := range webhooks {
		webhooks[i].(map[string]any)["failurePolicy"] = "Ignore"
	}
	_ = unstructured.SetNestedSlice(registration.Object, webhooks, "webhooks")
	defer func() { _ = env.Client.Delete(ctx, registration) }()
	for _, o := range append(rbacObjects(rendered), append(byKind(rendered, "Secret"), registration)...) {
		if err := env.Client.Patch(ctx, o.DeepCopy(), client.Apply, client.FieldOwner("install-test"), client.ForceOwnership); err != nil {
			t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	for _, ns := range []string{"tenant-a", "tenant-b"} {
		ensureNamespace(t, ns)
	}
	grant := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "hookline-secret-writer", Namespace: "tenant-a"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "hookline-secret-writer"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "hookline-controller-manager", Namespace: installNamespace}}}
	if err := env.Client.Create(ctx, grant); err != nil {
		t.Fatal(err)
	}
	review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: serviceAccount,
		ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: "tenant-b", Verb: "create", Resource: "secrets"}}}
	if err := env.Client.Create(ctx, review); err != nil || review.Status.Allowed {
		t.Fatalf("the ServiceAccount may create Secrets in a namespace that did not grant it (%v)", err)
	}

	impersonated := rest.CopyConfig(env.Config)
	impersonated.Impersonate = rest.ImpersonationConfig{UserName: serviceAccount}
	mgr, err := ctrl.NewManager(impersonated, ctrl.Options{
		Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Cache:          controllers.CacheOptions(),
		LeaderElection: true, LeaderElectionNamespace: installNamespace, LeaderElectionID: "hookline.hookline.dev",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := controllers.Setup(ctx, mgr, controllers.Config{AllowInsecureHTTP: true, MaxConcurrentDeliveries: 4,
		Sender:    delivery.NewClient(delivery.Options{AllowInsecureHTTP: true, AllowPrivateNetworks: true, UserAgent: "hookline/test"}),
		Retention: controllers.Retention{Succeeded: time.Hour, Failed: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	if err := serving.Setup(mctx, mgr, serving.Options{Mode: serving.SelfSigned, Port: 0, CertDir: t.TempDir(), Namespace: installNamespace,
		ServiceName: "hookline-webhook-service", SecretName: "hookline-webhook-server-cert",
		ConfigurationName: "hookline-validating-webhook-configuration"}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- mgr.Start(mctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	}()

	got := make(chan http.Header, 1)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.Header.Clone():
		default:
		}
	}))
	defer recv.Close()
	for _, ns := range []string{"tenant-a", "tenant-b"} {
		ep := &hooklinev1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Name: "ep", Namespace: ns},
			Spec: hooklinev1.WebhookEndpointSpec{URL: recv.URL + "/", Events: []string{"*"}}}
		if err := env.Client.Create(ctx, ep); err != nil {
			t.Fatal(err)
		}
	}
	ready := func(ns string) *metav1.Condition {
		var ep hooklinev1.WebhookEndpoint
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "ep"}, &ep); err != nil {
			return nil
		}
		return meta.FindStatusCondition(ep.Status.Conditions, hooklinev1.ConditionReady)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		a, b := ready("tenant-a"), ready("tenant-b")
		return a != nil && a.Reason == hooklinev1.ReasonActive && b != nil && b.Reason == hooklinev1.ReasonSecretInvalid, nil
	}); err != nil {
		t.Fatalf("tenant-a %+v, tenant-b %+v", ready("tenant-a"), ready("tenant-b"))
	}
	if msg := ready("tenant-b").Message; !strings.Contains(msg, "may not write Secrets in namespace tenant-b") {
		t.Errorf("tenant-b: %q", msg)
	}
	ev := &hooklinev1.WebhookEvent{ObjectMeta: metav1.ObjectMeta{Name: "e", Namespace: "tenant-a"},
		Spec: hooklinev1.WebhookEventSpec{Type: "order.created", Payload: runtime.RawExtension{Raw: []byte(`{"a":1}`)}}}
	if err := env.Client.Create(ctx, ev); err != nil {
		t.Fatal(err)
	}
	select {
	case h := <-got:
		if !strings.HasPrefix(h.Get("webhook-signature"), "v1,") {
			t.Fatalf("unsigned request: %v", h)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no webhook delivered by the manager running with the rendered RBAC")
	}
	// The rendered RBAC lets the manager provision the admission webhook's certificate.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var secret corev1.Secret
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: installNamespace, Name: "hookline-webhook-server-cert"}, &secret); err != nil {
			return false, err
		}
		var vwc unstructured.Unstructured
		vwc.SetGroupVersionKind(registration.GroupVersionKind())
		if err := env.Client.Get(ctx, client.ObjectKey{Name: registration.GetName()}, &vwc); err != nil {
			return false, err
		}
		webhooks, _, _ := unstructured.NestedSlice(vwc.Object, "webhooks")
		bundle, _, _ := unstructured.NestedString(webhooks[0].(map[string]any), "clientConfig", "caBundle")
		return len(secret.Data["tls.crt"]) > 0 && bundle != "", nil
	}); err != nil {
		t.Fatalf("the webhook certificate was not provisioned under the rendered RBAC: %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
