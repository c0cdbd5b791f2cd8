// Package v1alpha1 contains the hookline.dev/v1alpha1 API: WebhookEndpoint,
// WebhookEvent and WebhookDelivery.
// +kubebuilder:object:generate=true
// +groupName=hookline.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every hookline kind.
	GroupVersion = schema.GroupVersion{Group: "hookline.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the hookline kinds with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the hookline kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
