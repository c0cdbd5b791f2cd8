// Package secrets holds what the manager reads of Secrets it does not own.
package secrets

import (
	"context"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
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
