package serving

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/util/yaml"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/hookline/hookline/internal/admission"
	"github.com/hookline/hookline/internal/testenv"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// In self-signed mode the manager provisions the webhook's certificate with no
// manual step: the Secret is filled, the CA is injected into the registration, and
// the server answers with a certificate for the Service's DNS name.
func TestSelfSignedCertificateIsProvisionedAndInjected(t *testing.T) {
	testenv.Needs(t)
	ctrl.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	env, err := testenv.Start()
	testenv.SkipIfMissing(t, err)
	defer func() { _ = env.Stop() }()
	ctx := context.Background()
	c := env.Client
	opts := Options{Mode: SelfSigned, Port: freePort(t), CertDir: t.TempDir(), Namespace: "hookline-system",
		ServiceName: "hookline-webhook-service", SecretName: "hookline-webhook-server-cert",
		ConfigurationName: "hookline-validating-webhook-configuration"}

	// What the install ships: the namespace, an empty Secret, the registration.
	for _, o := range []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: opts.Namespace}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: opts.SecretName, Namespace: opts.Namespace}},
		registration(t, opts),
	} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}

	probes := freePort(t)
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: fmt.Sprintf("127.0.0.1:%d", probes)})
	if err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := Setup(mctx, mgr, opts); err != nil {
		t.Fatal(err)
	}
	go func() { _ = mgr.Start(mctx) }()

	var secret corev1.Secret
	var vwc admissionregistrationv1.ValidatingWebhookConfiguration
	poll(t, 30*time.Second, "certificate in the Secret and CA injected", func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKey{Namespace: opts.Namespace, Name: opts.SecretName}, &secret); err != nil {
			return false, err
		}
		if err := c.Get(ctx, client.ObjectKey{Name: opts.ConfigurationName}, &vwc); err != nil {
			return false, err
		}
		return len(secret.Data["ca.crt"]) > 0 && bytes.Equal(vwc.Webhooks[0].ClientConfig.CABundle, secret.Data["ca.crt"]), nil
	})
	// In a Pod the Secret is mounted at the cert dir; the kubelet writes its keys as
	// files. Here the test does.
	for _, name := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if err := os.WriteFile(filepath.Join(opts.CertDir, name), secret.Data[name], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, 30*time.Second, "/readyz answers 200", func(ctx context.Context) (bool, error) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probes))
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})

	// A client that trusts only the injected CA, as the API server does.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(vwc.Webhooks[0].ClientConfig.CABundle)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: opts.ServiceName + "." + opts.Namespace + ".svc", MinVersion: tls.VersionTLS12}}}
	deep := strings.Repeat(`{"a":`, 99) + "{}" + strings.Repeat("}", 99)
	review := fmt.Sprintf(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"group":"hookline.dev","version":"v1alpha1","kind":"WebhookEvent"},"operation":"CREATE","name":"deep","namespace":"shop","object":{"spec":{"type":"order.created","payload":%s}}}}`, deep)
	resp, err := hc.Post(fmt.Sprintf("https://127.0.0.1:%d%s", opts.Port, admission.PayloadPath), "application/json", strings.NewReader(review))
	if err != nil {
		t.Fatalf("TLS with the injected CA: %v", err)
	}
	defer resp.Body.Close()
	var got admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Response == nil || got.Response.UID != "u-1" || got.Response.Allowed || !strings.Contains(got.Response.Result.Message, "nested more than 64 levels") {
		t.Fatalf("review answer: %+v", got.Response)
	}
}

// registration is config/webhook's ValidatingWebhookConfiguration as kustomize names it.
func registration(t *testing.T, opts Options) *admissionregistrationv1.ValidatingWebhookConfiguration {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "config", "webhook", "manifests.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var vwc admissionregistrationv1.ValidatingWebhookConfiguration
	if err := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096).Decode(&vwc); err != nil {
		t.Fatal(err)
	}
	vwc.Name = opts.ConfigurationName
	for i := range vwc.Webhooks {
		vwc.Webhooks[i].ClientConfig.Service.Name = opts.ServiceName
		vwc.Webhooks[i].ClientConfig.Service.Namespace = opts.Namespace
	}
	return &vwc
}

func poll(t *testing.T, timeout time.Duration, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
