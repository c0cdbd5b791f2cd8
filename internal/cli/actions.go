package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// endpointActions are the one-shot annotations of an endpoint, by command.
var endpointActions = map[string]struct {
	annotation, short, done string
	handled                 func(*hooklinev1.WebhookEndpointStatus) string
}{
	"rotate": {hooklinev1.AnnotationRotateSecret, "Rotate an endpoint's signing secret (the previous one keeps signing for the grace period)", "rotated",
		func(s *hooklinev1.WebhookEndpointStatus) string { return s.LastHandledRotateSecret }},
	"enable": {hooklinev1.AnnotationEnable, "Enable an endpoint that was disabled automatically", "enabled",
		func(s *hooklinev1.WebhookEndpointStatus) string { return s.LastHandledEnable }},
	"test": {hooklinev1.AnnotationSendTest, "Send one hookline.test delivery to an endpoint now", "test delivery requested",
		func(s *hooklinev1.WebhookEndpointStatus) string { return s.LastHandledSendTest }},
}

func (a *app) annotationCommand(name string) *cobra.Command {
	action := endpointActions[name]
	return &cobra.Command{
		Use:   name + " ENDPOINT",
		Short: action.short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := a.context()
			defer cancel()
			ep, err := a.setToken(ctx, args[0], action.annotation)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.out, "webhookendpoint/%s %s\n", ep.Name, action.done)
			if name == "rotate" {
				fmt.Fprintf(a.out, "the previous secret signs until %s\n", formatTime(ep.Status.PreviousSecretsExpireAt))
			}
			if name == "enable" && ep.Status.DisabledReason != "" {
				return fmt.Errorf("webhookendpoint/%s is still disabled: %s", ep.Name, readyMessage(ep))
			}
			return nil
		},
	}
}

// setToken sets a one-shot annotation to a new token and waits until the manager has
// recorded it as handled.
func (a *app) setToken(ctx context.Context, name, annotation string) (*hooklinev1.WebhookEndpoint, error) {
	handled := func(*hooklinev1.WebhookEndpointStatus) string { return "" }
	for _, act := range endpointActions {
		if act.annotation == annotation {
			handled = act.handled
		}
	}
	token := time.Now().UTC().Format(time.RFC3339Nano)
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, annotation, token)
	ep := &hooklinev1.WebhookEndpoint{}
	ep.Name, ep.Namespace = name, a.ns
	if err := a.client.Patch(ctx, ep, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		return nil, fmt.Errorf("webhookendpoint/%s: %s", name, oneLine(err))
	}
	return a.waitEndpoint(ctx, name, func(ep *hooklinev1.WebhookEndpoint) bool { return handled(&ep.Status) == token })
}

// waitEndpoint polls the endpoint until done holds or --timeout passes.
func (a *app) waitEndpoint(ctx context.Context, name string, done func(*hooklinev1.WebhookEndpoint) bool) (*hooklinev1.WebhookEndpoint, error) {
	var ep hooklinev1.WebhookEndpoint
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if err := a.client.Get(ctx, client.ObjectKey{Namespace: a.ns, Name: name}, &ep); err != nil {
			if apierrors.IsNotFound(err) {
				return false, fmt.Errorf("webhookendpoint/%s not found in namespace %s", name, a.ns)
			}
			return false, nil
		}
		return done(&ep), nil
	})
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("webhookendpoint/%s: the manager did not act within %s (is it running?)", name, a.timeout)
	}
	return &ep, err
}

func readyCondition(ep *hooklinev1.WebhookEndpoint) *metav1.Condition {
	return meta.FindStatusCondition(ep.Status.Conditions, hooklinev1.ConditionReady)
}

// readyObserved reports whether the Ready condition describes the current spec.
func readyObserved(ep *hooklinev1.WebhookEndpoint) bool {
	c := readyCondition(ep)
	return c != nil && c.ObservedGeneration == ep.Generation && ep.Status.ObservedGeneration == ep.Generation
}

func readyReason(ep *hooklinev1.WebhookEndpoint) string {
	if c := readyCondition(ep); c != nil {
		return c.Reason
	}
	return ""
}

func readyMessage(ep *hooklinev1.WebhookEndpoint) string {
	if c := readyCondition(ep); c != nil {
		return c.Reason + ": " + c.Message
	}
	return "no Ready condition yet"
}

// print writes an object as -o json or -o yaml asked.
func (a *app) print(obj runtime.Object) error {
	if o, ok := obj.(client.Object); ok {
		o.SetManagedFields(nil)
	}
	if gvks, _, err := a.client.Scheme().ObjectKinds(obj); err == nil && len(gvks) > 0 {
		obj.GetObjectKind().SetGroupVersionKind(gvks[0])
	}
	return a.emit(obj)
}

// emit writes any value as -o json or -o yaml asked.
func (a *app) emit(v any) error {
	raw, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return err
	}
	if a.output == "yaml" {
		if raw, err = yaml.JSONToYAML(raw); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintln(a.out, string(raw))
	return err
}
