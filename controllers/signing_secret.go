package controllers

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/engine"
	"github.com/hookline/hookline/internal/signing"
)

// secretProblem is a Secret the user must fix; its message never contains the value.
type secretProblem struct{ msg string }

func (p *secretProblem) Error() string { return p.msg }

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
	if key.Algorithm() != engine.KeyAlgorithm(ep) {
		return signing.Key{}, "", &secretProblem{fmt.Sprintf("Secret %s holds a %s secret but the endpoint signs with %s (whsec_ is HMAC-SHA256, whsk_ is Ed25519)",
			secret.Name, key.Algorithm(), ep.SigningAlgorithm())}
	}
	return key, string(raw), nil
}

// newSigningSecretData generates the data of a managed signing Secret.
func newSigningSecretData(ep *hooklinev1.WebhookEndpoint) (map[string][]byte, error) {
	secretText, public, err := signing.NewSecret(engine.KeyAlgorithm(ep))
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
