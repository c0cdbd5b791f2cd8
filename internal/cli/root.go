// Package cli is kubectl-hookline: ensure-by-URL and day-2 operations on hookline
// objects from the command line. cmd/kubectl-hookline only calls Main.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/kubeclient"
)

// FieldManager is the server-side apply field manager of the plugin.
const FieldManager = "kubectl-hookline"

// app is one invocation: its streams, its client and namespace.
type app struct {
	in       io.Reader
	out, err io.Writer
	client   client.Client
	ns       string
	timeout  time.Duration
	output   string
	kube     clientcmd.ClientConfig
}

// Main runs the plugin and returns its exit code. Errors are one line on stderr.
func Main(args []string, in io.Reader, out, errOut io.Writer) int {
	a := &app{in: in, out: out, err: errOut}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(errOut)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(errOut, "error:", oneLine(err))
		return 1
	}
	return 0
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "kubectl-hookline",
		Short:         "Manage hookline webhook endpoints, events and deliveries",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Name() == "verify" || cmd.Name() == "help" || strings.Contains(cmd.CommandPath(), " completion") {
				return nil // offline
			}
			return a.connect()
		},
	}
	loading := clientcmd.NewDefaultClientConfigLoadingRules()
	overrides := &clientcmd.ConfigOverrides{}
	flags := root.PersistentFlags()
	flags.StringVar(&loading.ExplicitPath, "kubeconfig", "", "path to the kubeconfig file")
	clientcmd.BindOverrideFlags(overrides, flags, clientcmd.RecommendedConfigOverrideFlags(""))
	flags.DurationVar(&a.timeout, "timeout", 60*time.Second, "how long to wait for the manager to act")
	a.kube = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(loading, overrides)

	root.AddCommand(a.ensureCommand(), a.annotationCommand("rotate"), a.annotationCommand("enable"),
		a.annotationCommand("test"), a.deliveriesCommand(), a.retryCommand(), a.publishCommand(), a.verifyCommand(),
		a.historyCommand())
	return root
}

// connect builds the client from the standard kubeconfig flags.
func (a *app) connect() error {
	cfg, err := a.kube.ClientConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	ns, _, err := a.kube.Namespace()
	if err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := hooklinev1.AddToScheme(scheme); err != nil {
		return err
	}
	c, err := client.New(kubeclient.Guarded(cfg), client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	a.client, a.ns = c, ns
	return nil
}

// context bounds one command by --timeout.
func (a *app) context() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), a.timeout)
}

// oneLine makes an error fit one line, and API errors read like kubectl's.
func oneLine(err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		err = errors.New(status.Status().Message)
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}
