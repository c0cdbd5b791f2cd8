package install

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
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
