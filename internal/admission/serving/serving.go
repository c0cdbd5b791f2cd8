// Package serving runs hookline's admission webhook inside the manager: the server on
// every replica and its serving certificate, provisioned by cert-controller
// (self-signed, rotated, CA injected) or by cert-manager.
package serving

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sync/atomic"

	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/hookline/hookline/internal/admission"
)

// The ways the admission webhook's serving certificate is provisioned.
const (
	Off         = "off"          // no webhook served (local runs, tests)
	SelfSigned  = "self-signed"  // cert-controller: a CA and a certificate in a Secret, rotated, CA injected
	CertManager = "cert-manager" // cert-manager fills the mounted Secret and injects the CA
)

// Options are the flags of the admission webhook.
type Options struct {
	Mode              string
	Port              int
	CertDir           string
	Namespace         string
	ServiceName       string
	SecretName        string
	ConfigurationName string
	// Budget, when set, refuses creates while hookline's etcd budget is full (429).
	Budget admission.Budget
}

// Bind registers the flags.
func (w *Options) Bind(fs *flag.FlagSet) {
	fs.StringVar(&w.Mode, "admission-webhook", Off, "serve the payload admission webhook, its certificate provisioned by: off | self-signed (rotated by the manager) | cert-manager")
	fs.IntVar(&w.Port, "webhook-port", 9443, "port of the admission webhook server")
	fs.StringVar(&w.CertDir, "webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs", "directory of the webhook's tls.crt and tls.key")
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "hookline-system"
	}
	fs.StringVar(&w.Namespace, "webhook-namespace", ns, "namespace of the webhook Service and certificate Secret (default: $POD_NAMESPACE)")
	fs.StringVar(&w.ServiceName, "webhook-service-name", "hookline-webhook-service", "Service in front of the webhook (the certificate's DNS name)")
	fs.StringVar(&w.SecretName, "webhook-secret-name", "hookline-webhook-server-cert", "Secret holding the webhook's certificate (self-signed mode)")
	fs.StringVar(&w.ConfigurationName, "webhook-configuration-name", "hookline-validating-webhook-configuration", "ValidatingWebhookConfiguration whose caBundle is kept (self-signed mode)")
}

// Validate checks the flags.
func (w *Options) Validate() error {
	switch w.Mode {
	case Off, SelfSigned, CertManager:
		return nil
	}
	return fmt.Errorf("--admission-webhook must be %s, %s or %s", Off, SelfSigned, CertManager)
}

// Setup serves the payload webhook on every replica (not only the leader:
// the API server calls whichever answers). In self-signed mode cert-controller keeps
// the CA and the certificate in the Secret (mounted at the cert dir) and the CA in the
// registration; the server starts once the kubelet has put the certificate in the
// mount. Until then /readyz fails, so the Service sends no review to a replica that
// cannot answer.
func Setup(ctx context.Context, mgr ctrl.Manager, w Options) error {
	if w.Mode == Off {
		return nil
	}
	log := ctrl.Log.WithName("admission")
	server := webhook.NewServer(webhook.Options{
		Port:    w.Port,
		CertDir: w.CertDir,
		// HTTP/2 is off, as on the metrics endpoint (Rapid Reset, Stream Cancellation).
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	})
	server.Register(admission.PayloadPath, admission.PayloadHandler{Budget: w.Budget, Log: func(msg string, kv ...any) { log.Info(msg, kv...) }})

	certsReady := make(chan struct{})
	if w.Mode == SelfSigned {
		svc := w.ServiceName + "." + w.Namespace + ".svc"
		if err := rotator.AddRotator(mgr, &rotator.CertRotator{
			SecretKey:      types.NamespacedName{Namespace: w.Namespace, Name: w.SecretName},
			CertDir:        w.CertDir,
			CAName:         "hookline-webhook-ca",
			CAOrganization: "hookline",
			DNSName:        svc,
			ExtraDNSNames:  []string{svc + ".cluster.local", w.ServiceName + "." + w.Namespace},
			IsReady:        certsReady,
			Webhooks:       []rotator.WebhookInfo{{Name: w.ConfigurationName, Type: rotator.Validating}},
		}); err != nil {
			return fmt.Errorf("certificate rotator: %w", err)
		}
	} else {
		close(certsReady) // cert-manager fills the Secret mounted at the cert dir
	}

	var serving atomic.Bool
	go func() {
		select {
		case <-certsReady:
		case <-ctx.Done():
			return
		}
		if err := mgr.Add(server); err != nil {
			log.Error(err, "cannot start the admission webhook server")
			return
		}
		serving.Store(true)
	}()
	return mgr.AddReadyzCheck("admission-webhook", func(req *http.Request) error {
		if !serving.Load() {
			return errors.New("the webhook's certificate is not ready yet")
		}
		return server.StartedChecker()(req)
	})
}
