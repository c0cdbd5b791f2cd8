// Package controllers holds one thin reconciler per hookline kind; the work they
// delegate lives in internal/.
package controllers

import (
	"context"
	"slices"

	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/urlkey"
)

// Field indexes of the manager's cache.
const (
	// indexEndpointURL holds urlkey.IndexKey of an endpoint's normalised URL.
	indexEndpointURL = "hookline.urlKey"
	// indexDeliveryEndpoint holds a delivery's spec.endpointRef.name.
	indexDeliveryEndpoint = "spec.endpointRef.name"
	// indexDeliveryEvent holds a delivery's spec.eventRef.name.
	indexDeliveryEvent = "spec.eventRef.name"
	// indexEndpointSecrets holds the names of the Secrets an endpoint reads: its
	// signing Secret and its headers' Secrets.
	indexEndpointSecrets = "hookline.secretNames"
)

// SetupIndexes registers the field indexes every reconciler relies on.
func SetupIndexes(ctx context.Context, idx client.FieldIndexer) error {
	if err := idx.IndexField(ctx, &hooklinev1.WebhookEndpoint{}, indexEndpointURL, func(o client.Object) []string {
		if key := endpointURLKey(o.(*hooklinev1.WebhookEndpoint)); key != "" {
			return []string{key}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := idx.IndexField(ctx, &hooklinev1.WebhookEndpoint{}, indexEndpointSecrets, func(o client.Object) []string {
		return endpointSecretNames(o.(*hooklinev1.WebhookEndpoint))
	}); err != nil {
		return err
	}
	if err := idx.IndexField(ctx, &hooklinev1.WebhookDelivery{}, indexDeliveryEndpoint, func(o client.Object) []string {
		return []string{o.(*hooklinev1.WebhookDelivery).Spec.EndpointRef.Name}
	}); err != nil {
		return err
	}
	return idx.IndexField(ctx, &hooklinev1.WebhookDelivery{}, indexDeliveryEvent, func(o client.Object) []string {
		if ref := o.(*hooklinev1.WebhookDelivery).Spec.EventRef; ref != nil {
			return []string{ref.Name}
		}
		return nil
	})
}

// endpointURLKey is the index key of an endpoint's normalised URL; empty when the URL
// cannot be normalised.
func endpointURLKey(ep *hooklinev1.WebhookEndpoint) string {
	n, err := urlkey.Normalize(ep.Spec.URL)
	if err != nil {
		return ""
	}
	return urlkey.IndexKey(n)
}

// endpointSecretNames lists the Secrets an endpoint reads, each once.
func endpointSecretNames(ep *hooklinev1.WebhookEndpoint) []string {
	names := []string{ep.SigningSecretName()}
	for _, h := range ep.Spec.Headers {
		if h.ValueFrom != nil && !slices.Contains(names, h.ValueFrom.SecretKeyRef.Name) {
			names = append(names, h.ValueFrom.SecretKeyRef.Name)
		}
	}
	return names
}
