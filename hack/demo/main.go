// The demo: a throwaway control plane (the envtest binaries the tests use), the
// manager binary, and a sample receiver that verifies signatures. It applies
// config/samples, publishes events, shows the deliveries and the receiver's verdicts,
// and exits cleanly.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

const namespace = "shop"

func main() {
	manager := flag.String("manager", "bin/manager", "the manager binary")
	crds := flag.String("crds", "config/crd/bases", "directory of the CRDs")
	samples := flag.String("samples", "config/samples", "directory of the samples")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *manager, *crds, *samples); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(ctx context.Context, managerBin, crdDir, sampleDir string) error {
	work, err := os.MkdirTemp("", "hookline-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	step("starting a local control plane (kube-apiserver + etcd from %s)", os.Getenv("KUBEBUILDER_ASSETS"))
	env := &envtest.Environment{CRDDirectoryPaths: []string{crdDir}, ErrorIfCRDPathMissing: true}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	defer func() { _ = env.Stop() }()
	user, err := env.AddUser(envtest.User{Name: "demo", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return err
	}
	kubeconfigPath := filepath.Join(work, "kubeconfig")
	if err := os.WriteFile(kubeconfigPath, kubeconfig, 0o600); err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = hooklinev1.AddToScheme(scheme)
	cfg.QPS, cfg.Burst = 100, 200
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}

	step("starting the sample receiver (verifies Standard Webhooks signatures)")
	recv := &sampleReceiver{failOnce: map[string]bool{"order.succeeded": true}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: recv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close() }()
	receiverURL := "http://" + ln.Addr().String() + "/hooks"
	fmt.Println("    listening on", receiverURL)

	step("starting the manager: %s", managerBin)
	logPath := filepath.Join(os.TempDir(), "hookline-demo-manager.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	mgr := exec.Command(managerBin, "--kubeconfig="+kubeconfigPath,
		"--allow-insecure-http", "--allow-private-networks", // the receiver is plain HTTP on loopback
		"--metrics-bind-address=0", "--health-probe-bind-address=0")
	mgr.Stdout, mgr.Stderr = logFile, logFile
	if err := mgr.Start(); err != nil {
		return fmt.Errorf("start manager: %w", err)
	}
	defer stopProcess(mgr)
	fmt.Println("    logs:", logPath)

	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); err != nil {
		return err
	}
	objs, err := readSamples(sampleDir)
	if err != nil {
		return err
	}

	step("applying the sample WebhookEndpoint (its url pointed at the sample receiver)")
	var events []*unstructured.Unstructured
	for _, o := range objs {
		o.SetNamespace(namespace)
		if o.GetKind() == "WebhookEvent" {
			events = append(events, o) // published once the endpoint is Ready
			continue
		}
		if o.GetKind() == "WebhookEndpoint" {
			if err := unstructured.SetNestedField(o.Object, receiverURL, "spec", "url"); err != nil {
				return err
			}
		}
		if err := c.Create(ctx, o); err != nil {
			return fmt.Errorf("apply %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		fmt.Printf("    %s/%s created\n", strings.ToLower(o.GetKind()), o.GetName())
	}
	ep, err := waitEndpointReady(ctx, c, "acme-orders")
	if err != nil {
		return err
	}
	fmt.Printf("    Ready=%s reason=%s secret=%s hint=%s\n", "True", hooklinev1.ReasonActive, ep.Status.SecretName, ep.Status.SecretHint)
	var secret corev1.Secret
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: ep.Status.SecretName}, &secret); err != nil {
		return err
	}
	// The customer got the secret out of band (here: read from the cluster).
	if err := recv.setSecret(string(secret.Data[hooklinev1.SecretKeySigningSecret])); err != nil {
		return err
	}

	step("publishing events: the sample order.created, and an order.succeeded the receiver refuses once")
	succeeded := &hooklinev1.WebhookEvent{
		ObjectMeta: metav1.ObjectMeta{Name: "order-1234-succeeded", Namespace: namespace},
		Spec: hooklinev1.WebhookEventSpec{Type: "order.succeeded", Payload: runtime.RawExtension{Raw: []byte(`{"order":1234,"paid":true}`)},
			EndpointSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"customer": "acme"}}},
	}
	for _, o := range events {
		if err := c.Create(ctx, o); err != nil {
			return err
		}
		fmt.Printf("    webhookevent/%s created\n", o.GetName())
	}
	if err := c.Create(ctx, succeeded); err != nil {
		return err
	}
	fmt.Printf("    webhookevent/%s created\n", succeeded.Name)

	step("waiting for every delivery to finish (the refused one is retried after about 5s)")
	if err := waitAllFinished(ctx, c, 1+len(events)); err != nil {
		return err
	}
	for _, resource := range []string{"webhookendpoints", "webhookevents", "webhookdeliveries"} {
		if err := printTable(ctx, cfg, resource); err != nil {
			return err
		}
	}
	if err := printHistories(ctx, c); err != nil {
		return err
	}

	step("what the sample receiver concluded")
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "    WEBHOOK-ID\tTYPE\tANSWER\tVERDICT")
	verified := 0
	for _, v := range recv.snapshot() {
		fmt.Fprintf(tw, "    %s\t%s\t%d\t%s\n", v.ID, v.Type, v.Status, v.Result)
		if strings.HasPrefix(v.Result, "signature valid") {
			verified++
		}
	}
	_ = tw.Flush()
	total := len(recv.snapshot())
	if total == 0 || verified != total {
		return fmt.Errorf("%d of %d requests carried a valid signature", verified, total)
	}
	step("done: %d signed requests received, every signature verified; shutting down", total)
	return nil
}

func readSamples(dir string) ([]*unstructured.Unstructured, error) {
	var kust struct {
		Resources []string `json:"resources"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	if err := yaml.Unmarshal(raw, &kust); err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, f := range kust.Resources {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return nil, err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if len(u.Object) > 0 {
				out = append(out, u)
			}
		}
	}
	return out, nil
}

func waitEndpointReady(ctx context.Context, c client.Client, name string) (*hooklinev1.WebhookEndpoint, error) {
	var ep hooklinev1.WebhookEndpoint
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &ep); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		cond := meta.FindStatusCondition(ep.Status.Conditions, hooklinev1.ConditionReady)
		return cond != nil && cond.Reason == hooklinev1.ReasonActive, nil
	})
	if err != nil {
		return nil, fmt.Errorf("endpoint %s never became Ready (see the manager's log): %w", name, err)
	}
	return &ep, nil
}

func waitAllFinished(ctx context.Context, c client.Client, want int) error {
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		var list hooklinev1.WebhookDeliveryList
		if err := c.List(ctx, &list, client.InNamespace(namespace)); err != nil {
			return false, err
		}
		if len(list.Items) < want {
			return false, nil
		}
		for _, d := range list.Items {
			if !d.Status.Phase.Finished() {
				return false, nil
			}
		}
		var events hooklinev1.WebhookEventList
		if err := c.List(ctx, &events, client.InNamespace(namespace)); err != nil {
			return false, err
		}
		for _, e := range events.Items {
			if !meta.IsStatusConditionTrue(e.Status.Conditions, hooklinev1.ConditionComplete) {
				return false, nil
			}
		}
		return true, nil
	})
}

// printHistories shows the attempts of deliveries that needed more than one.
func printHistories(ctx context.Context, c client.Client) error {
	var list hooklinev1.WebhookDeliveryList
	if err := c.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		return err
	}
	for _, d := range list.Items {
		if len(d.Status.History) > 1 {
			h, _ := json.MarshalIndent(d.Status.History, "    ", "  ")
			fmt.Printf("\n    status.history of %s:\n    %s\n", d.Name, h)
		}
	}
	return nil
}

// stopProcess asks the manager to stop and waits for it.
func stopProcess(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}
