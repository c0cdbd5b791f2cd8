package controllers

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/testenv"
)

// Every field of the endpoint's status has exactly one writer, and the table names no
// field the type does not have.
func TestEveryEndpointStatusFieldHasOneOwner(t *testing.T) {
	typ := reflect.TypeOf(hooklinev1.WebhookEndpointStatus{})
	fields := map[string]bool{}
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		fields[name] = true
		if owner := endpointStatusOwners[name]; owner != fieldManagerEndpoint && owner != fieldManagerHealth {
			t.Errorf("status.%s has no writer in endpointStatusOwners", name)
		}
	}
	for name := range endpointStatusOwners {
		if !fields[name] {
			t.Errorf("endpointStatusOwners names status.%s, which WebhookEndpointStatus does not have", name)
		}
	}
}

// statusManagers reads managedFields: for each top-level status field, the managers
// (and operations) that own it.
func statusManagers(t *testing.T, ep *hooklinev1.WebhookEndpoint) map[string][]string {
	t.Helper()
	owners := map[string][]string{}
	for _, mf := range ep.ManagedFields {
		if mf.FieldsV1 == nil {
			continue
		}
		var fields map[string]map[string]any
		if err := json.Unmarshal(mf.FieldsV1.Raw, &fields); err != nil {
			t.Fatal(err)
		}
		for f := range fields["f:status"] {
			name := strings.TrimPrefix(f, "f:")
			owners[name] = append(owners[name], mf.Manager+"/"+string(mf.Operation))
		}
	}
	for _, m := range owners {
		sort.Strings(m)
	}
	return owners
}

// An endpoint taken through a rotation, a 410 disable and an enable: each status field
// is managed by its declared writer alone, by server-side apply.
func TestEndpointStatusFieldsHaveOneManagerEach(t *testing.T) {
	testenv.Needs(t)
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	recv := newReceiver(t, http.StatusGone)
	ep := activeEndpoint(t, newEndpoint(ns, "acme", recv.URL+"/", "order.created"))
	ep = patched(t, ep, func(e *hooklinev1.WebhookEndpoint) {
		metav1.SetMetaDataAnnotation(&e.ObjectMeta, hooklinev1.AnnotationRotateSecret, "r1")
	})
	eventually(t, 10*time.Second, "rotated", func(context.Context) (bool, string, error) {
		ep = getEndpoint(ctx, t, ns, "acme")
		return ep.Status.LastHandledRotateSecret == "r1", ep.Status.LastHandledRotateSecret, nil
	})
	createAll(ctx, t, newEvent(ns, "e1", "order.created", `{}`))
	ep = waitReady(t, ns, "acme", hooklinev1.ReasonDisabled)
	patched(t, ep, func(e *hooklinev1.WebhookEndpoint) {
		metav1.SetMetaDataAnnotation(&e.ObjectMeta, hooklinev1.AnnotationEnable, "e1")
	})
	ep = waitReady(t, ns, "acme", hooklinev1.ReasonActive)
	if ep.Status.LastHandledEnable != "e1" || ep.Status.LastRotationTime == nil || ep.Status.LastFailureTime == nil {
		t.Fatalf("the story did not happen: %+v", ep.Status)
	}

	owners := statusManagers(t, ep)
	for field, managers := range owners {
		want := endpointStatusOwners[field] + "/" + string(metav1.ManagedFieldsOperationApply)
		if len(managers) != 1 || managers[0] != want {
			t.Errorf("status.%s is managed by %v, want %s alone", field, managers, want)
		}
	}
	for _, field := range []string{"conditions", "secretName", "lastRotationTime", "lastHandledRotateSecret", "lastFailureTime", "lastHandledEnable"} {
		if len(owners[field]) == 0 {
			t.Errorf("status.%s has no manager at all (all: %v)", field, owners)
		}
	}
}
