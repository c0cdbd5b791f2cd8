package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/conditions"
	"github.com/hookline/hookline/internal/keyring"
	"github.com/hookline/hookline/internal/signing"
)

// rotatedForAnnotation on a managed signing Secret is the rotate-secret token its
// value answers.
const rotatedForAnnotation = "hookline.dev/rotated-for"

// ConditionSecretRotation reports a rotation request that could not be acted on.
const ConditionSecretRotation = "SecretRotation"

// secretOutcome is what ensureSigningSecret found.
type secretOutcome struct {
	problem      string        // for the user: Ready=False SecretInvalid
	requeueAfter time.Duration // a grace period ends
}

// ensureSigningSecret creates the managed signing Secret, rotates it on a new token,
// notices a new value of a user's Secret, and keeps the keyring (current and previous
// secrets) and the status that describes it true.
func (r *EndpointReconciler) ensureSigningSecret(ctx context.Context, ep *hooklinev1.WebhookEndpoint, now time.Time) (secretOutcome, error) {
	st := &ep.Status
	st.SecretName = ep.SigningSecretName()
	token := ep.Annotations[hooklinev1.AnnotationRotateSecret]
	wantsRotation := token != "" && token != st.LastHandledRotateSecret

	secret, err := r.Secrets.Get(ctx, ep.Namespace, st.SecretName)
	switch {
	case apierrors.IsNotFound(err):
		data, err := newSigningSecretData(ep)
		if err != nil {
			return secretOutcome{}, err
		}
		secret = newManagedSecret(ep, st.SecretName, data)
		if token != "" {
			// A fresh secret answers the token present at creation.
			metav1.SetMetaDataAnnotation(&secret.ObjectMeta, rotatedForAnnotation, token)
		}
		if err := controllerutil.SetControllerReference(ep, secret, r.Scheme()); err != nil {
			return secretOutcome{}, err
		}
		if err := r.Create(ctx, secret); err != nil {
			if p := forbiddenToWrite(err, ep.Namespace); p != nil {
				return secretOutcome{problem: p.msg}, nil
			}
			return secretOutcome{}, err // AlreadyExists included: the next reconcile reads it
		}
		st.LastHandledRotateSecret = token // a fresh secret answers any pending request
		wantsRotation = false
	case err != nil:
		return secretOutcome{}, err
	}
	userManaged := !metav1.IsControlledBy(secret, ep)

	_, value, err := currentKey(secret, ep)
	var problem *secretProblem
	switch {
	case errors.As(err, &problem) && userManaged:
		st.SecretHint, st.PublicKey, st.PublicKeyID = "", "", ""
		return secretOutcome{problem: problem.msg}, nil
	case errors.As(err, &problem):
		wantsRotation = true // our own Secret no longer fits the spec (the algorithm changed): replace it
	case err != nil:
		return secretOutcome{}, err
	}

	if wantsRotation {
		if userManaged {
			st.LastHandledRotateSecret = token
			msg := fmt.Sprintf("the %s annotation was not acted on: Secret %s is not managed by hookline; rotate it at its source (Sealed Secrets, External Secrets…) and hookline keeps the previous value signing for the grace period",
				hooklinev1.AnnotationRotateSecret, secret.Name)
			conditions.Set(&st.Conditions, ep.Generation, ConditionSecretRotation, metav1.ConditionFalse, "UserManagedSecret", msg, now)
			logf.FromContext(ctx).V(1).Info("rotation refused: user-managed Secret", "endpoint", client.ObjectKeyFromObject(ep), "secret", secret.Name)
			r.Recorder.Eventf(ep, nil, corev1.EventTypeWarning, "RotationRefused", "RotateSecret", "%s", msg)
		} else if token == "" || secret.Annotations[rotatedForAnnotation] != token {
			// The token is written with the new value, and the write carries the
			// resourceVersion read: a reconcile working from a stale cache cannot
			// rotate twice for one token.
			data, err := newSigningSecretData(ep)
			if err != nil {
				return secretOutcome{}, err
			}
			secret.Data = data
			if token != "" {
				metav1.SetMetaDataAnnotation(&secret.ObjectMeta, rotatedForAnnotation, token)
			}
			if err := r.Update(ctx, secret); err != nil {
				if p := forbiddenToWrite(err, ep.Namespace); p != nil {
					return secretOutcome{problem: p.msg}, nil
				}
				return secretOutcome{}, err
			}
			if _, value, err = currentKey(secret, ep); err != nil {
				return secretOutcome{}, err
			}
			if token != "" && token != st.LastHandledRotateSecret {
				st.LastHandledRotateSecret = token
			}
			conditions.Set(&st.Conditions, ep.Generation, ConditionSecretRotation, metav1.ConditionTrue, "Rotated",
				fmt.Sprintf("rotated; the previous secret keeps signing for %s", ep.RotationGracePeriod()), now)
			logf.FromContext(ctx).V(1).Info("rotated", "endpoint", client.ObjectKeyFromObject(ep), "token", token, "gracePeriod", ep.RotationGracePeriod())
			r.Recorder.Eventf(ep, nil, corev1.EventTypeNormal, "SecretRotated", "RotateSecret",
				"signing secret rotated; the previous one keeps signing for %s", ep.RotationGracePeriod())
		} else {
			st.LastHandledRotateSecret = token // rotated already; the status write was lost
		}
	}

	kr, changed, err := r.syncKeyring(ctx, ep, value, now)
	if errors.As(err, &problem) {
		return secretOutcome{problem: problem.msg}, nil
	}
	if err != nil {
		return secretOutcome{}, err
	}
	if changed {
		st.LastRotationTime = &metav1.Time{Time: now}
		if userManaged && changed {
			logf.FromContext(ctx).V(1).Info("user's Secret changed; the previous value keeps signing", "endpoint", client.ObjectKeyFromObject(ep), "secret", secret.Name, "gracePeriod", ep.RotationGracePeriod())
			r.Recorder.Eventf(ep, nil, corev1.EventTypeNormal, "SecretChanged", "RotateSecret",
				"Secret %s has a new value; the previous one keeps signing for %s", secret.Name, ep.RotationGracePeriod())
		}
	}
	key, _ := signing.ParseSecret(value)
	st.SecretHint = key.Hint()
	st.PublicKey, st.PublicKeyID = "", ""
	if pub := key.PublicKey(); pub != nil {
		st.PublicKey, st.PublicKeyID = signing.FormatPublicKey(pub), signing.KeyID(pub)
	}
	st.PreviousSecretsExpireAt = kr.ExpiresAt()

	var out secretOutcome
	if next, ok := kr.NextExpiry(); ok {
		out.requeueAfter = max(next.Sub(now), time.Second)
	}
	return out, nil
}

// syncKeyring records the current value in the keyring: a value not seen before moves
// the old one to the previous secrets for the grace period; expired ones are dropped.
// It reports whether the current value changed.
func (r *EndpointReconciler) syncKeyring(ctx context.Context, ep *hooklinev1.WebhookEndpoint, value string, now time.Time) (keyring.Keyring, bool, error) {
	name := keyring.SecretName(ep.Name)
	secret, err := r.Secrets.Get(ctx, ep.Namespace, name)
	if apierrors.IsNotFound(err) {
		kr := keyring.Keyring{Current: value}
		secret = newManagedSecret(ep, name, kr.Encode())
		if err := controllerutil.SetControllerReference(ep, secret, r.Scheme()); err != nil {
			return keyring.Keyring{}, false, err
		}
		if err := r.Create(ctx, secret); err != nil {
			if p := forbiddenToWrite(err, ep.Namespace); p != nil {
				return keyring.Keyring{}, false, p
			}
			return keyring.Keyring{}, false, err
		}
		return kr, false, nil
	}
	if err != nil {
		return keyring.Keyring{}, false, err
	}
	if !metav1.IsControlledBy(secret, ep) {
		return keyring.Keyring{}, false, &secretProblem{fmt.Sprintf("Secret %s exists and is not owned by this endpoint; hookline keeps the endpoint's previous signing secrets under that name: rename or delete it", name)}
	}
	kr, err := keyring.Decode(secret.Name, secret.Data)
	if err != nil {
		return keyring.Keyring{}, false, &secretProblem{err.Error()}
	}
	changed := kr.Observe(value, ep.RotationGracePeriod(), now)
	pruned := kr.Prune(now)
	if changed || pruned {
		secret.Data = kr.Encode()
		if err := r.Update(ctx, secret); err != nil {
			if p := forbiddenToWrite(err, ep.Namespace); p != nil {
				return keyring.Keyring{}, false, p
			}
			return keyring.Keyring{}, false, err
		}
	}
	return kr, changed, nil
}

// forbiddenToWrite turns a refused Secret write into what the cluster admin must do:
// Secret writes are granted per namespace.
func forbiddenToWrite(err error, namespace string) *secretProblem {
	if !apierrors.IsForbidden(err) {
		return nil
	}
	return &secretProblem{fmt.Sprintf("the hookline manager may not write Secrets in namespace %s: bind the ClusterRole hookline-secret-writer to its ServiceAccount there (kubectl create rolebinding hookline-secret-writer -n %s --clusterrole=hookline-secret-writer --serviceaccount=hookline-system:hookline-controller-manager)", namespace, namespace)}
}
