package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// The field managers that write a WebhookEndpoint's status, by server-side apply: each
// applies only the fields it owns, so the API server itself keeps them apart.
const (
	// fieldManagerEndpoint: the endpoint controller (readiness, signing, tokens).
	fieldManagerEndpoint = "hookline-endpoint"
	// fieldManagerHealth: the health recorder (attempt outcomes, disable, enable).
	fieldManagerHealth = "hookline-health"
)

// endpointStatusOwners names the one writer of each status field (by JSON name). A
// field missing here is written by nobody: TestEveryEndpointStatusFieldHasOneOwner
// fails for it.
var endpointStatusOwners = map[string]string{
	"observedGeneration":      fieldManagerEndpoint,
	"conditions":              fieldManagerEndpoint,
	"secretName":              fieldManagerEndpoint,
	"secretHint":              fieldManagerEndpoint,
	"publicKey":               fieldManagerEndpoint,
	"publicKeyID":             fieldManagerEndpoint,
	"lastRotationTime":        fieldManagerEndpoint,
	"lastHandledRotateSecret": fieldManagerEndpoint,
	"lastHandledSendTest":     fieldManagerEndpoint,
	"previousSecretsExpireAt": fieldManagerEndpoint,
	"consecutiveFailures":     fieldManagerHealth,
	"lastSuccessTime":         fieldManagerHealth,
	"lastFailureTime":         fieldManagerHealth,
	"failingSince":            fieldManagerHealth,
	"disabledReason":          fieldManagerHealth,
	"disabledGeneration":      fieldManagerHealth,
	"lastHandledEnable":       fieldManagerHealth,
}

// statusProjection is the part of a status one field manager owns, as JSON.
func statusProjection(st *hooklinev1.WebhookEndpointStatus, manager string) (map[string]any, error) {
	raw, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	var all map[string]any
	if err := json.Unmarshal(raw, &all); err != nil {
		return nil, err
	}
	for field := range all {
		if endpointStatusOwners[field] != manager {
			delete(all, field)
		}
	}
	return all, nil
}

// applyEndpointStatus writes manager's fields of ep's status by server-side apply, if
// they changed from before's, with the resourceVersion of ep as an optimistic lock
// (a stale copy gets a Conflict). It reports whether it wrote.
//
// A field of another hookline writer is never taken: the API server refuses that apply
// with a conflict, and it is returned as a terminal error, loudly, because it is a bug.
// Fields left by an older manager (merge patches) or written by a person are taken over.
func applyEndpointStatus(ctx context.Context, c client.Client, before, ep *hooklinev1.WebhookEndpoint, manager string) (bool, error) {
	was, err := statusProjection(&before.Status, manager)
	if err != nil {
		return false, err
	}
	now, err := statusProjection(&ep.Status, manager)
	if err != nil {
		return false, err
	}
	if reflect.DeepEqual(was, now) {
		return false, nil
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": hooklinev1.GroupVersion.String(),
		"kind":       "WebhookEndpoint",
		"metadata": map[string]any{
			"name": ep.Name, "namespace": ep.Namespace, "resourceVersion": ep.ResourceVersion,
		},
		"status": now,
	}}
	apply := client.ApplyConfigurationFromUnstructured(u)
	err = c.Status().Apply(ctx, apply, client.FieldOwner(manager))
	if conflicts := fieldConflicts(err); len(conflicts) > 0 {
		for _, m := range conflicts {
			if strings.HasPrefix(m, "hookline-") {
				return false, reconcile.TerminalError(fmt.Errorf("%s may not write a status field another hookline writer owns (%s): %w", manager, m, err))
			}
		}
		err = c.Status().Apply(ctx, apply, client.FieldOwner(manager), client.ForceOwnership)
	}
	if err != nil {
		return false, err
	}
	ep.ResourceVersion = u.GetResourceVersion()
	return true, nil
}

// fieldConflicts returns the field managers a server-side apply conflicted with, or
// nothing for any other error (an optimistic-lock Conflict included).
func fieldConflicts(err error) []string {
	var status apierrors.APIStatus
	if !errors.As(err, &status) || !apierrors.IsConflict(err) || status.Status().Details == nil {
		return nil
	}
	var managers []string
	for _, cause := range status.Status().Details.Causes {
		if cause.Type != metav1.CauseTypeFieldManagerConflict {
			continue
		}
		// `conflict with "hookline-health" using hookline.dev/v1alpha1`
		if _, rest, ok := strings.Cut(cause.Message, `conflict with "`); ok {
			if m, _, ok := strings.Cut(rest, `"`); ok {
				managers = append(managers, m)
			}
		}
	}
	return managers
}

// isStaleWrite: the write carried a resourceVersion that is no longer current.
func isStaleWrite(err error) bool {
	return apierrors.IsConflict(err) && len(fieldConflicts(err)) == 0
}
