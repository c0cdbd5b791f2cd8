package cli

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/pkg/publish"
)

func (a *app) publishCommand() *cobra.Command {
	var typ, data, name, publishURL string
	var insecure bool
	cmd := &cobra.Command{
		Use:   "publish --type T --data @file.json [--name NAME]",
		Short: "Publish an event (a WebhookEvent, or through the publish API); its name is the idempotency key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if typ == "" || !eventNamePattern.MatchString(typ) || len(typ) > 128 {
				return fmt.Errorf("--type %q: an event type like order.created is required", typ)
			}
			payload, err := a.readData(data)
			if err != nil {
				return err
			}
			if publishURL != "" {
				return a.publishThroughAPI(publishURL, insecure, name, typ, payload)
			}
			ev := &hooklinev1.WebhookEvent{
				ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: name},
				Spec:       hooklinev1.WebhookEventSpec{Type: typ, Payload: runtime.RawExtension{Raw: payload}},
			}
			if name == "" {
				ev.GenerateName = strings.ReplaceAll(typ, "_", "-") + "-"
			}
			ctx, cancel := a.context()
			defer cancel()
			if err := a.client.Create(ctx, ev); err != nil {
				if apierrors.IsAlreadyExists(err) {
					fmt.Fprintf(a.out, "webhookevent/%s already exists: the name is the idempotency key, nothing was published again\n", name)
					return nil
				}
				return fmt.Errorf("webhookevent: %s", oneLine(err))
			}
			fmt.Fprintf(a.out, "webhookevent/%s published\n", ev.Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&typ, "type", "", "the event type (required)")
	cmd.Flags().StringVar(&data, "data", "", "the JSON object payload, inline or @file (@- reads stdin)")
	cmd.Flags().StringVar(&name, "name", "", "the event's name: publishing the same name twice delivers once")
	cmd.Flags().StringVar(&publishURL, "publish-url", "", "publish through the manager's publish API at this URL (the PostgreSQL store; a port-forward or a Service address) with the kubeconfig's token, instead of creating a WebhookEvent")
	cmd.Flags().BoolVar(&insecure, "publish-insecure-skip-tls-verify", false, "with --publish-url: do not verify its certificate (the manager makes its own; the token is what is trusted)")
	return cmd
}

// publishThroughAPI publishes one event through the publish API with the user's token.
func (a *app) publishThroughAPI(url string, insecure bool, name, typ string, payload []byte) error {
	cfg, err := a.kube.ClientConfig()
	if err != nil {
		return err
	}
	token, err := bearerToken(cfg, "publish --publish-url")
	if err != nil {
		return err
	}
	if name == "" {
		suffix := make([]byte, 4)
		_, _ = rand.Read(suffix)
		name = strings.ReplaceAll(typ, "_", "-") + "-" + hex.EncodeToString(suffix)
	}
	c := publish.Client{URL: strings.TrimSuffix(url, "/"), Token: token, Attempts: 3,
		HTTP: &http.Client{Timeout: a.timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: insecure, MinVersion: tls.VersionTLS12}}}}
	ctx, cancel := a.context()
	defer cancel()
	resp, err := c.Publish(ctx, a.ns, publish.Event{Name: name, Type: typ, Payload: payload})
	if err != nil {
		return err
	}
	if resp.Queued == 0 {
		fmt.Fprintf(a.out, "event %s published before, or no endpoint receives it: nothing queued\n", name)
		return nil
	}
	fmt.Fprintf(a.out, "event %s published: %d deliveries queued\n", name, resp.Queued)
	return nil
}

// readData reads --data: inline JSON, @file or @- for stdin; it must be an object.
func (a *app) readData(data string) ([]byte, error) {
	if data == "" {
		return nil, fmt.Errorf("--data is required: a JSON object, or @file.json")
	}
	raw := []byte(data)
	if strings.HasPrefix(data, "@") {
		var err error
		if data == "@-" {
			raw, err = io.ReadAll(a.in)
		} else {
			raw, err = os.ReadFile(data[1:])
		}
		if err != nil {
			return nil, fmt.Errorf("--data: %v", err)
		}
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("--data: not a JSON object: %v", err)
	}
	return json.Marshal(obj)
}
