package controllers

import (
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// eventRecorder emits Kubernetes Events (events.k8s.io/v1).
type eventRecorder = events.EventRecorder

// disabledChanged lets through the status changes the delivery controller makes that the
// endpoint controller must act on: an endpoint disabled (410 Gone, failing too long).
func disabledChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*hooklinev1.WebhookEndpoint)
			n, ok2 := e.ObjectNew.(*hooklinev1.WebhookEndpoint)
			return ok1 && ok2 && o.Status.DisabledReason != n.Status.DisabledReason
		},
		CreateFunc:  func(event.CreateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
}

// deliveryGate is what decides whether an endpoint's deliveries may be sent; only a
// change of it re-enqueues the endpoint's deliveries (not every status write).
func deliveryGate(ep *hooklinev1.WebhookEndpoint) [3]string {
	paused := "false"
	if ep.Spec.Paused {
		paused = "true"
	}
	accepts := "false"
	if ep.AcceptsDeliveries() {
		accepts = "true"
	}
	return [3]string{paused, ep.Status.DisabledReason, accepts}
}

func deliveryGateChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*hooklinev1.WebhookEndpoint)
			n, ok2 := e.ObjectNew.(*hooklinev1.WebhookEndpoint)
			return ok1 && ok2 && deliveryGate(o) != deliveryGate(n)
		},
	}
}
