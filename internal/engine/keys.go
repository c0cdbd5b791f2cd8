package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/keyring"
	"github.com/hookline/hookline/internal/secrets"
	"github.com/hookline/hookline/internal/signing"
)

// SecretReader reads Secrets from the cache when the manager made them (the cache only
// holds Secrets labelled managed-by=hookline) and otherwise through the UserSecretCache
// (a user's Secret from Sealed Secrets or External Secrets, a header's Secret).
type SecretReader struct {
	Cached client.Reader
	// User holds the Secrets the manager reads but does not own; without it (some unit
	// tests) only Cached is read.
	User *secrets.UserSecretCache
}

// Get reads a Secret of the namespace.
func (s SecretReader) Get(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	var secret corev1.Secret
	key := types.NamespacedName{Namespace: namespace, Name: name}
	err := s.Cached.Get(ctx, key, &secret)
	if apierrors.IsNotFound(err) && s.User != nil {
		return s.User.Get(ctx, key)
	}
	if err != nil {
		return nil, err
	}
	return &secret, nil
}

// Wait means the delivery cannot be attempted yet; the message says why (never a
// secret's value).
type Wait struct{ Msg string }

func (e *Wait) Error() string { return e.Msg }

// KeyAlgorithm is the algorithm of the keys that sign the endpoint's requests.
func KeyAlgorithm(ep *hooklinev1.WebhookEndpoint) signing.Algorithm {
	if ep.SigningAlgorithm() == hooklinev1.AlgorithmEd25519 {
		return signing.Ed25519
	}
	return signing.HMACSHA256
}

// errKeysNotReady: the keyring is missing, not the endpoint's, or holds no usable key.
var errKeysNotReady = errors.New("signing keys not ready")

// SigningKeys returns the keys that sign the endpoint's requests now, current first,
// from the keyring the endpoint controller keeps (always in the cache). Keys that are
// not ready are a *Wait.
func SigningKeys(ctx context.Context, c client.Reader, ep *hooklinev1.WebhookEndpoint, now time.Time) ([]signing.Key, error) {
	keys, err := loadSigningKeys(ctx, c, ep, now)
	if apierrors.IsNotFound(err) || errors.Is(err, errKeysNotReady) {
		return nil, &Wait{fmt.Sprintf("the signing keys of WebhookEndpoint %s are not ready", ep.Name)}
	}
	return keys, err
}

func loadSigningKeys(ctx context.Context, c client.Reader, ep *hooklinev1.WebhookEndpoint, now time.Time) ([]signing.Key, error) {
	var s corev1.Secret
	if err := c.Get(ctx, types.NamespacedName{Namespace: ep.Namespace, Name: keyring.SecretName(ep.Name)}, &s); err != nil {
		return nil, err
	}
	if !metav1.IsControlledBy(&s, ep) {
		return nil, errKeysNotReady // not this endpoint's keyring
	}
	kr, err := keyring.Decode(s.Name, s.Data)
	if err != nil {
		return nil, errKeysNotReady
	}
	want := KeyAlgorithm(ep)
	var keys []signing.Key
	for _, v := range kr.SigningValues(now) {
		k, err := signing.ParseSecret(v)
		if err != nil || k.Algorithm() != want {
			continue // a secret of the algorithm the endpoint used before cannot sign now
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errKeysNotReady
	}
	return keys, nil
}
