package install

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/hookline/hookline/internal/testenv"
)

// helmTemplate renders dist/chart with the pinned helm, CRDs included.
func helmTemplate(t *testing.T, args ...string) []*unstructured.Unstructured {
	t.Helper()
	return decodeObjects(t, runTool(t, "helm", append([]string{"template", "hl", filepath.Join(repoRoot, "dist", "chart"),
		"--namespace", installNamespace, "--include-crds"}, args...)...))
}

// The chart renders the same install as config/default: valid objects, the same
// security baseline, the manager's generated RBAC, no cluster-wide Secret write.
func TestHelmChartRendersTheSameInstall(t *testing.T) {
	objs := helmTemplate(t, "--set", "secretWriterNamespaces={tenant-x}", "--set", "networkPolicy.enable=true",
		"--set", "manager.watchNamespaces={tenant-x}")
	ensureNamespace(t, installNamespace)
	ensureNamespace(t, "tenant-x")
	for _, o := range objs {
		if err := env.Client.Patch(context.Background(), o.DeepCopy(), client.Apply, client.FieldOwner("chart-test"), client.DryRunAll, client.ForceOwnership); err != nil {
			t.Errorf("%s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	for kind, n := range map[string]int{"CustomResourceDefinition": 3, "Deployment": 1, "ServiceAccount": 1, "Service": 2,
		"PodDisruptionBudget": 1, "NetworkPolicy": 1, "ValidatingWebhookConfiguration": 1, "Secret": 1, "FlowSchema": 1, "PriorityLevelConfiguration": 1} {
		if got := len(byKind(objs, kind)); got != n {
			t.Errorf("%d %s rendered, want %d", got, kind, n)
		}
	}
	assertRBACNarrow(t, objs)
	d := byKind(objs, "Deployment")[0]
	kustomized := byKind(render(t), "Deployment")[0]
	chartPod := convert[appsv1.Deployment](t, d).Spec.Template.Spec
	kustPod := convert[appsv1.Deployment](t, kustomized).Spec.Template.Spec
	if !reflect.DeepEqual(chartPod.SecurityContext, kustPod.SecurityContext) ||
		!reflect.DeepEqual(chartPod.Containers[0].SecurityContext, kustPod.Containers[0].SecurityContext) ||
		!reflect.DeepEqual(chartPod.Containers[0].Env, kustPod.Containers[0].Env) {
		t.Error("the chart's security settings or environment differ from config/default's")
	}
	args := chartPod.Containers[0].Args
	if !contains(args, "--leader-elect") || !contains(args, "--watch-namespaces=tenant-x") {
		t.Errorf("args: %v", args)
	}

	// The chart's webhook registration is the generated one.
	chartHooks, _, _ := unstructured.NestedSlice(byKind(objs, "ValidatingWebhookConfiguration")[0].Object, "webhooks")
	kustHooks, _, _ := unstructured.NestedSlice(byKind(render(t), "ValidatingWebhookConfiguration")[0].Object, "webhooks")
	for _, field := range []string{"rules", "failurePolicy", "sideEffects", "timeoutSeconds", "matchPolicy", "name"} {
		if !reflect.DeepEqual(chartHooks[0].(map[string]any)[field], kustHooks[0].(map[string]any)[field]) {
			t.Errorf("the chart's webhook %s differs from config/webhook's: %v vs %v", field, chartHooks[0].(map[string]any)[field], kustHooks[0].(map[string]any)[field])
		}
	}
	if !contains(args, "--admission-webhook=self-signed") || !contains(args, "--webhook-secret-name=hl-hookline-webhook-server-cert") {
		t.Errorf("args: %v", args)
	}

	generated, err := os.ReadFile(filepath.Join("..", "..", "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want rbacv1.ClusterRole
	if err := yaml.Unmarshal(generated, &want); err != nil {
		t.Fatal(err)
	}
	found, secretBinding := false, false
	for _, u := range byKind(objs, "ClusterRole") {
		role := convert[rbacv1.ClusterRole](t, u)
		if role.Name == "hl-hookline-manager-role" {
			found = true
			if !reflect.DeepEqual(role.Rules, want.Rules) {
				t.Errorf("the chart's manager rules differ from the generated ones:\n%+v\n%+v", role.Rules, want.Rules)
			}
		}
	}
	for _, u := range byKind(objs, "RoleBinding") {
		if u.GetNamespace() == "tenant-x" {
			secretBinding = true
		}
	}
	if !found || !secretBinding {
		t.Errorf("manager ClusterRole rendered %v, Secret writes granted in tenant-x %v", found, secretBinding)
	}
}

// The archive is off by default; its kustomize component and the chart's value turn it
// on the same way: the DSN file from a Secret of the user's, and the retention.
func TestArchiveIsOptionalAndWiredAlike(t *testing.T) {
	for name, pod := range map[string]func() []*unstructured.Unstructured{
		"config/default": func() []*unstructured.Unstructured { return render(t) },
		"chart defaults": func() []*unstructured.Unstructured { return helmTemplate(t) },
	} {
		args := convert[appsv1.Deployment](t, byKind(pod(), "Deployment")[0]).Spec.Template.Spec.Containers[0].Args
		for _, a := range args {
			if len(a) > 10 && a[:10] == "--archive-" {
				t.Errorf("%s: the archive is on by default (%s)", name, a)
			}
		}
	}
	kust := convert[appsv1.Deployment](t, byKind(renderDir(t, "overlays/with-archive"), "Deployment")[0]).Spec.Template.Spec
	chart := convert[appsv1.Deployment](t, byKind(helmTemplate(t, "--set", "archive.enable=true", "--set", "archive.dsnSecretName=hookline-archive"), "Deployment")[0]).Spec.Template.Spec
	for name, pod := range map[string]corev1.PodSpec{"with-archive overlay": kust, "chart with archive.enable": chart} {
		c := pod.Containers[0]
		if !contains(c.Args, "--archive-postgres-dsn-file=/etc/hookline/archive/dsn") || !contains(c.Args, "--archive-retention=720h") {
			t.Errorf("%s: args %v", name, c.Args)
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || (m.MountPath == "/etc/hookline/archive" && m.ReadOnly)
		}
		secret := false
		for _, v := range pod.Volumes {
			secret = secret || (v.Secret != nil && v.Secret.SecretName == "hookline-archive")
		}
		if !mounted || !secret {
			t.Errorf("%s: the Secret hookline-archive is not mounted read-only at /etc/hookline/archive: %+v %+v", name, c.VolumeMounts, pod.Volumes)
		}
		history := false
		for _, p := range c.Ports {
			history = history || (p.Name == "history" && p.ContainerPort == 8444)
		}
		if !history {
			t.Errorf("%s: no history port: %+v", name, c.Ports)
		}
	}
	// The history Service and the proxy Role come with the archive only, and are valid.
	ensureNamespace(t, installNamespace)
	for name, objs := range map[string][]*unstructured.Unstructured{
		"with-archive overlay":      renderDir(t, "overlays/with-archive"),
		"chart with archive.enable": helmTemplate(t, "--set", "archive.enable=true", "--set", "archive.dsnSecretName=hookline-archive"),
	} {
		var extra []*unstructured.Unstructured
		for _, o := range objs {
			if strings.Contains(o.GetName(), "history") {
				extra = append(extra, o)
			}
		}
		if len(extra) != 3 {
			t.Errorf("%s: %d history objects, want a Service, a Role and a RoleBinding", name, len(extra))
		}
		for _, o := range extra {
			if err := env.Client.Patch(context.Background(), o.DeepCopy(), client.Apply, client.FieldOwner("archive-test"), client.DryRunAll, client.ForceOwnership); err != nil {
				t.Errorf("%s: %s %s: %v", name, o.GetKind(), o.GetName(), err)
			}
		}
	}
	for _, o := range append(render(t), helmTemplate(t)...) {
		if strings.Contains(o.GetName(), "history") {
			t.Errorf("%s %s is installed without the archive", o.GetKind(), o.GetName())
		}
	}
}

// The PostgreSQL delivery store is off by default, and the overlay and the chart turn
// it on alike, on the archive's database; the chart refuses it without one.
func TestPostgresStoreIsOptionalAndWiredAlike(t *testing.T) {
	for name, objs := range map[string][]*unstructured.Unstructured{"config/default": render(t), "chart defaults": helmTemplate(t)} {
		for _, a := range convert[appsv1.Deployment](t, byKind(objs, "Deployment")[0]).Spec.Template.Spec.Containers[0].Args {
			if strings.HasPrefix(a, "--delivery-store") {
				t.Errorf("%s: %s by default", name, a)
			}
		}
	}
	kust := convert[appsv1.Deployment](t, byKind(renderDir(t, "overlays/with-postgres-store"), "Deployment")[0]).Spec.Template.Spec
	chart := convert[appsv1.Deployment](t, byKind(helmTemplate(t, "--set", "deliveryStore=postgres", "--set", "archive.enable=true",
		"--set", "archive.dsnSecretName=hookline-archive"), "Deployment")[0]).Spec.Template.Spec
	for name, pod := range map[string]corev1.PodSpec{"with-postgres-store overlay": kust, "chart with deliveryStore=postgres": chart} {
		args := pod.Containers[0].Args
		if !contains(args, "--delivery-store=postgres") || !contains(args, "--archive-postgres-dsn-file=/etc/hookline/archive/dsn") {
			t.Errorf("%s: args %v", name, args)
		}
		publishPort := false
		for _, p := range pod.Containers[0].Ports {
			publishPort = publishPort || (p.Name == "publish" && p.ContainerPort == 8445)
		}
		if !publishPort {
			t.Errorf("%s: no publish port: %+v", name, pod.Containers[0].Ports)
		}
	}
	for name, objs := range map[string][]*unstructured.Unstructured{
		"with-postgres-store overlay": renderDir(t, "overlays/with-postgres-store"),
		"chart with deliveryStore=postgres": helmTemplate(t, "--set", "deliveryStore=postgres", "--set", "archive.enable=true",
			"--set", "archive.dsnSecretName=hookline-archive"),
	} {
		found := false
		for _, svc := range byKind(objs, "Service") {
			s := convert[corev1.Service](t, svc)
			found = found || (strings.HasSuffix(s.Name, "-publish") && len(s.Spec.Ports) == 1 && s.Spec.Ports[0].Port == 8445)
		}
		if !found {
			t.Errorf("%s: no publish Service on 8445", name)
		}
	}
	helm, err := testenv.Tool("helm")
	testenv.SkipIfMissing(t, err)
	out, err := exec.Command(helm, "template", "x", filepath.Join(repoRoot, "dist", "chart"), "--set", "deliveryStore=postgres").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "set archive.enable and archive.dsnSecretName") {
		t.Fatalf("the chart rendered deliveryStore=postgres without a database (%v): %s", err, out)
	}
}
