package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

func (a *app) publishCommand() *cobra.Command {
	var typ, data, name string
	cmd := &cobra.Command{
		Use:   "publish --type T --data @file.json [--name NAME]",
		Short: "Publish a WebhookEvent; its name is the idempotency key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if typ == "" || !eventNamePattern.MatchString(typ) || len(typ) > 128 {
				return fmt.Errorf("--type %q: an event type like order.created is required", typ)
			}
			payload, err := a.readData(data)
			if err != nil {
				return err
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
	return cmd
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
