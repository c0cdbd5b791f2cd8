package controllers

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// secretMetadata is the object of the metadata-only watch of Secrets.
func secretMetadata() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	return m
}

// newSecretMetadataCache is a cache of its own for the metadata-only watch of
// Secrets: the manager's cache restricts Secrets to the ones hookline made, and that
// restriction applies to every informer of the kind in it.
func newSecretMetadataCache(mgr manager.Manager, namespaces map[string]cache.Config) (cache.Cache, error) {
	return cache.New(mgr.GetConfig(), cache.Options{
		HTTPClient:        mgr.GetHTTPClient(),
		Scheme:            mgr.GetScheme(),
		Mapper:            mgr.GetRESTMapper(),
		DefaultNamespaces: namespaces,
		// Annotations may hold a copy of the data (kubectl's last-applied-configuration);
		// nothing here needs them, nor managedFields.
		DefaultTransform: func(o any) (any, error) {
			if m, ok := o.(*metav1.PartialObjectMetadata); ok {
				m.Annotations, m.ManagedFields = nil, nil
			}
			return o, nil
		},
	})
}

// isManagedSecret reports a Secret hookline made (cached in full by the manager).
func isManagedSecret(o client.Object) bool {
	return o.GetLabels()[hooklinev1.ManagedByLabel] == hooklinev1.ManagedByValue
}
