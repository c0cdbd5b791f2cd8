package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/signing"
)

// SecretReader reads Secrets from the cache when the manager made them (the cache only
// holds Secrets labelled managed-by=hookline) and from the API server otherwise (a
// user's Secret from Sealed Secrets or External Secrets, a header's Secret).
type SecretReader struct {
	Cached client.Reader
	Live   client.Reader
}

// Get reads a Secret of the namespace.
func (s SecretReader) Get(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	var secret corev1.Secret
	key := types.NamespacedName{Namespace: namespace, Name: name}
	err := s.Cached.Get(ctx, key, &secret)
	if apierrors.IsNotFound(err) && s.Live != nil {
		err = s.Live.Get(ctx, key, &secret)
	}
	if err != nil {
		return nil, err
	}
	return &secret, nil
}

// secretProblem is a Secret the user must fix; its message never contains the value.
type secretProblem struct{ msg string }

func (p *secretProblem) Error() string { return p.msg }

// signingMaterial is what an endpoint signs with.
type signingMaterial struct {
	keys        []signing.Key // current first
	hint        string
	publicKey   string
	keyID       string
	userManaged bool
}

func wantAlgorithm(ep *hooklinev1.WebhookEndpoint) signing.Algorithm {
	if ep.SigningAlgorithm() == hooklinev1.AlgorithmEd25519 {
		return signing.Ed25519
	}
	return signing.HMACSHA256
}

// loadSigningMaterial reads and checks the endpoint's signing Secret.
func loadSigningMaterial(ctx context.Context, secrets SecretReader, ep *hooklinev1.WebhookEndpoint) (*corev1.Secret, signingMaterial, error) {
	name := ep.SigningSecretName()
	secret, err := secrets.Get(ctx, ep.Namespace, name)
	if err != nil {
		return nil, signingMaterial{}, err
	}
	m, err := materialFromSecret(secret, ep)
	return secret, m, err
}

func materialFromSecret(secret *corev1.Secret, ep *hooklinev1.WebhookEndpoint) (signingMaterial, error) {
	m := signingMaterial{userManaged: !metav1.IsControlledBy(secret, ep)}
	raw, ok := secret.Data[hooklinev1.SecretKeySigningSecret]
	if !ok || len(raw) == 0 {
		return m, &secretProblem{fmt.Sprintf("Secret %s has no key %q", secret.Name, hooklinev1.SecretKeySigningSecret)}
	}
	key, err := signing.ParseSecret(string(raw))
	if err != nil {
		return m, &secretProblem{fmt.Sprintf("Secret %s key %q: %v", secret.Name, hooklinev1.SecretKeySigningSecret, err)}
	}
	if key.Algorithm() != wantAlgorithm(ep) {
		return m, &secretProblem{fmt.Sprintf("Secret %s holds a %s secret but the endpoint signs with %s (whsec_ is HMAC-SHA256, whsk_ is Ed25519)",
			secret.Name, key.Algorithm(), ep.SigningAlgorithm())}
	}
	m.keys = []signing.Key{key}
	m.hint = key.Hint()
	if pub := key.PublicKey(); pub != nil {
		m.publicKey = signing.FormatPublicKey(pub)
		m.keyID = signing.KeyID(pub)
	}
	return m, nil
}

// newSigningSecret builds the Secret the manager creates and owns for an endpoint.
func newSigningSecret(ep *hooklinev1.WebhookEndpoint) (*corev1.Secret, error) {
	secretText, public, err := signing.NewSecret(wantAlgorithm(ep))
	if err != nil {
		return nil, err
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      ep.SigningSecretName(),
			Namespace: ep.Namespace,
			Labels:    managedLabels(ep),
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{hooklinev1.SecretKeySigningSecret: []byte(secretText)},
	}
	if public != "" {
		s.Data[hooklinev1.SecretKeyPublicKey] = []byte(public)
	}
	return s, nil
}

func managedLabels(ep *hooklinev1.WebhookEndpoint) map[string]string {
	labels := map[string]string{hooklinev1.ManagedByLabel: hooklinev1.ManagedByValue}
	if len(ep.Name) <= 63 {
		labels[hooklinev1.EndpointLabel] = ep.Name
	}
	return labels
}
