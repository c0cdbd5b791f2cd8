// Package testenv starts the envtest control plane (kube-apiserver and etcd built by
// hack/build-envtest.sh) with hookline's CRDs, for the test suites of every package.
package testenv

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// Env is a running control plane.
type Env struct {
	Config *rest.Config
	Client client.Client // direct to the API server, as a user's kubectl is
	Scheme *runtime.Scheme
	env    *envtest.Environment
}

// Assets is the directory of the envtest binaries: $KUBEBUILDER_ASSETS, or the cache
// hack/build-envtest.sh fills.
func Assets() string {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "hookline", "envtest", "k8s-v1.37.2-etcd-v3.6.16")
}

// repoRoot finds the directory of go.mod above the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Start starts a control plane with the CRDs of config/crd/bases.
func Start() (*Env, error) { return StartWith(Options{}) }

// Options are what a suite needs besides the CRDs.
type Options struct {
	// Webhooks installs config/webhook's admission webhooks, pointed at a local
	// server the suite runs with Env.WebhookServing.
	Webhooks bool
}

// WebhookServing is where the API server expects the suite's webhook server: its
// host, port and a directory holding tls.crt and tls.key for it.
func (e *Env) WebhookServing() (host string, port int, certDir string) {
	o := e.env.WebhookInstallOptions
	return o.LocalServingHost, o.LocalServingPort, o.LocalServingCertDir
}

// StartWith starts a control plane with the CRDs and what opts ask for.
func StartWith(opts Options) (*Env, error) {
	if err := checkWanted(); err != nil {
		return nil, err
	}
	assets := Assets()
	if _, err := os.Stat(filepath.Join(assets, "kube-apiserver")); err != nil {
		return nil, missingf("no envtest control plane in %s: run `make envtest` (make test builds it with hack/build-envtest.sh)", assets)
	}
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := hooklinev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	if opts.Webhooks {
		env.WebhookInstallOptions = envtest.WebhookInstallOptions{Paths: []string{filepath.Join(root, "config", "webhook", "manifests.yaml")}}
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("start envtest: %w", err)
	}
	// Tests poll every 50ms; client-go's default of 5 requests per second would throttle them.
	cfg.QPS, cfg.Burst = 500, 1000
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme, env: env}, nil
}

// Stop stops the control plane.
func (e *Env) Stop() error { return e.env.Stop() }

// EtcdURL is the client URL of the control plane's etcd (benchmarks read its metrics
// and sizes from it).
func (e *Env) EtcdURL() string { return e.env.ControlPlane.Etcd.URL.String() }

// Kubeconfig writes a kubeconfig for a user of these groups (system:masters for an
// administrator) to dir and returns its path, for tests of command-line tools.
func (e *Env) Kubeconfig(dir, user string, groups ...string) (string, error) {
	u, err := e.env.AddUser(envtest.User{Name: user, Groups: groups}, nil)
	if err != nil {
		return "", err
	}
	raw, err := u.KubeConfig()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, user+".kubeconfig")
	return path, os.WriteFile(path, raw, 0o600)
}
