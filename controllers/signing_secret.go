package controllers

import (
	"context"
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

// secretProblem is a Secret the user must fix; its message never contains the value.
type secretProblem struct{ msg string }

func (p *secretProblem) Error() string { return p.msg }

func wantAlgorithm(ep *hooklinev1.WebhookEndpoint) signing.Algorithm {
	if ep.SigningAlgorithm() == hooklinev1.AlgorithmEd25519 {
		return signing.Ed25519
	}
	return signing.HMACSHA256
}

// currentKey reads and checks the value of the signing Secret.
func currentKey(secret *corev1.Secret, ep *hooklinev1.WebhookEndpoint) (signing.Key, string, error) {
	raw, ok := secret.Data[hooklinev1.SecretKeySigningSecret]
	if !ok || len(raw) == 0 {
		return signing.Key{}, "", &secretProblem{fmt.Sprintf("Secret %s has no key %q", secret.Name, hooklinev1.SecretKeySigningSecret)}
	}
	key, err := signing.ParseSecret(string(raw))
	if err != nil {
		return signing.Key{}, "", &secretProblem{fmt.Sprintf("Secret %s key %q: %v", secret.Name, hooklinev1.SecretKeySigningSecret, err)}
	}
	if key.Algorithm() != wantAlgorithm(ep) {
		return signing.Key{}, "", &secretProblem{fmt.Sprintf("Secret %s holds a %s secret but the endpoint signs with %s (whsec_ is HMAC-SHA256, whsk_ is Ed25519)",
			secret.Name, key.Algorithm(), ep.SigningAlgorithm())}
	}
	return key, string(raw), nil
}

// newSigningSecretData generates the data of a managed signing Secret.
func newSigningSecretData(ep *hooklinev1.WebhookEndpoint) (map[string][]byte, error) {
	secretText, public, err := signing.NewSecret(wantAlgorithm(ep))
	if err != nil {
		return nil, err
	}
	data := map[string][]byte{hooklinev1.SecretKeySigningSecret: []byte(secretText)}
	if public != "" {
		data[hooklinev1.SecretKeyPublicKey] = []byte(public)
	}
	return data, nil
}

func managedLabels(ep *hooklinev1.WebhookEndpoint) map[string]string {
	labels := map[string]string{hooklinev1.ManagedByLabel: hooklinev1.ManagedByValue}
	if len(ep.Name) <= 63 {
		labels[hooklinev1.EndpointLabel] = ep.Name
	}
	return labels
}

func newManagedSecret(ep *hooklinev1.WebhookEndpoint, name string, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ep.Namespace, Labels: managedLabels(ep)},
		Type:       corev1.SecretTypeOpaque,
		Data:       data,
	}
}

// loadSigningKeys returns the keys that sign the endpoint's requests now, current first,
// from the keyring the endpoint controller keeps (always in the cache).
func loadSigningKeys(ctx context.Context, c client.Reader, ep *hooklinev1.WebhookEndpoint, now time.Time) ([]signing.Key, error) {
	var s corev1.Secret
	if err := c.Get(ctx, types.NamespacedName{Namespace: ep.Namespace, Name: keyring.SecretName(ep.Name)}, &s); err != nil {
		return nil, err
	}
	if !metav1.IsControlledBy(&s, ep) {
		return nil, &secretProblem{fmt.Sprintf("Secret %s is not the keyring of this endpoint", s.Name)}
	}
	kr, err := keyring.Decode(s.Name, s.Data)
	if err != nil {
		return nil, &secretProblem{err.Error()}
	}
	want := wantAlgorithm(ep)
	var keys []signing.Key
	for _, v := range kr.SigningValues(now) {
		k, err := signing.ParseSecret(v)
		if err != nil || k.Algorithm() != want {
			continue // a secret of the algorithm the endpoint used before cannot sign now
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, &secretProblem{"no usable signing secret yet"}
	}
	return keys, nil
}
