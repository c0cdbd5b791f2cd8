package controllers

import (
	"context"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// UserSecretCache keeps the Secrets hookline reads but does not own (a user's signing
// Secret from Sealed Secrets or External Secrets, the Secrets of headers[].valueFrom),
// each read once from the API server and forgotten as soon as the metadata-only watch
// of Secrets reports a change of it. The manager so notices a new value within a
// watch event's latency without caching every Secret of the cluster: the watch holds
// metadata only, and values are held for the Secrets an endpoint names.
type UserSecretCache struct {
	live client.Reader

	mu      sync.Mutex
	entries map[types.NamespacedName]userSecretEntry
	// generation counts the changes seen per Secret, so that a read racing with a
	// change never stores the value from before it.
	generation map[types.NamespacedName]uint64
}

type userSecretEntry struct {
	secret   *corev1.Secret // nil: the Secret did not exist
	notFound error
}

// NewUserSecretCache reads through live.
func NewUserSecretCache(live client.Reader) *UserSecretCache {
	return &UserSecretCache{live: live, entries: map[types.NamespacedName]userSecretEntry{}, generation: map[types.NamespacedName]uint64{}}
}

// Get returns the Secret (a copy the caller may keep), reading it from the API server
// when it is not held or changed since it was read. A missing Secret is remembered
// as missing until it is created.
func (c *UserSecretCache) Get(ctx context.Context, key types.NamespacedName) (*corev1.Secret, error) {
	c.mu.Lock()
	e, ok := c.entries[key]
	gen := c.generation[key]
	c.mu.Unlock()
	if ok {
		if e.secret == nil {
			return nil, e.notFound
		}
		return e.secret.DeepCopy(), nil
	}
	var s corev1.Secret
	err := c.live.Get(ctx, key, &s)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, err
	}
	entry := userSecretEntry{notFound: err}
	if err == nil {
		entry.secret = &s
	}
	c.mu.Lock()
	if c.generation[key] == gen {
		c.entries[key] = entry
	}
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return s.DeepCopy(), nil
}

// Forget drops what is held of a Secret: it changed, appeared or went away.
func (c *UserSecretCache) Forget(key types.NamespacedName) {
	c.mu.Lock()
	delete(c.entries, key)
	c.generation[key]++
	c.mu.Unlock()
}

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
