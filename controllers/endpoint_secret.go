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

// secretOutcome is what ensureSigningSecret found.
type secretOutcome struct {
	problem      string        // for the user: Ready=False SecretInvalid
	requeueAfter time.Duration // a grace period ends
}

// ensureSigningSecret keeps the signing Secret, the keyring (current and previous
// secrets) and the status that describes them true: it reads the Secret, lets
// planSigningSecret decide, acts on the plan, syncs the keyring, and describes the
// result in status.
func (r *EndpointReconciler) ensureSigningSecret(ctx context.Context, ep *hooklinev1.WebhookEndpoint, now time.Time) (secretOutcome, error) {
	st := &ep.Status
	st.SecretName = ep.SigningSecretName()
	secret, err := r.Secrets.Get(ctx, ep.Namespace, st.SecretName)
	if apierrors.IsNotFound(err) {
		secret, err = nil, nil
	}
	if err != nil {
		return secretOutcome{}, err
	}
	plan := planSigningSecret(ep, secret)
	if plan.action == secretUserInvalid {
		st.SecretHint, st.PublicKey, st.PublicKeyID = "", "", ""
		return secretOutcome{problem: plan.problem}, nil
	}
	secret, problem, err := r.applySecretPlan(ctx, ep, secret, plan, now)
	if err != nil || problem != "" {
		return secretOutcome{problem: problem}, err
	}
	_, value, err := currentKey(secret, ep)
	if err != nil {
		return secretOutcome{}, err
	}
	kr, changed, err := r.syncKeyring(ctx, ep, value, now)
	var p *secretProblem
	if errors.As(err, &p) {
		return secretOutcome{problem: p.msg}, nil
	}
	if err != nil {
		return secretOutcome{}, err
	}
	if changed {
		st.LastRotationTime = &metav1.Time{Time: now}
		if !metav1.IsControlledBy(secret, ep) {
			logf.FromContext(ctx).V(1).Info("user's Secret changed; the previous value keeps signing", "endpoint", client.ObjectKeyFromObject(ep), "secret", secret.Name, "gracePeriod", ep.RotationGracePeriod())
			r.Recorder.Eventf(ep, nil, corev1.EventTypeNormal, hooklinev1.EventSecretChanged, "RotateSecret",
				"Secret %s has a new value; the previous one keeps signing for %s", secret.Name, ep.RotationGracePeriod())
		}
	}
	return describeSigning(st, value, kr, now), nil
}

// applySecretPlan carries out the plan: it creates or rotates the Secret, or answers
// a rotation request it cannot act on, and records the token in status. It returns the
// Secret as it now is, or a problem for the user.
func (r *EndpointReconciler) applySecretPlan(ctx context.Context, ep *hooklinev1.WebhookEndpoint, secret *corev1.Secret, plan secretPlan, now time.Time) (*corev1.Secret, string, error) {
	st := &ep.Status
	switch plan.action {
	case secretCreate:
		data, err := newSigningSecretData(ep)
		if err != nil {
			return nil, "", err
		}
		secret = newManagedSecret(ep, st.SecretName, data)
		if plan.token != "" {
			// A fresh secret answers the token present at creation.
			metav1.SetMetaDataAnnotation(&secret.ObjectMeta, rotatedForAnnotation, plan.token)
		}
		if err := controllerutil.SetControllerReference(ep, secret, r.Scheme()); err != nil {
			return nil, "", err
		}
		if err := r.Create(ctx, secret); err != nil {
			if p := forbiddenToWrite(err, ep.Namespace); p != nil {
				return nil, p.msg, nil
			}
			return nil, "", err // AlreadyExists included: the next reconcile reads it
		}
		st.LastHandledRotateSecret = plan.token // a fresh secret answers any pending request
	case secretRefuseRotation:
		st.LastHandledRotateSecret = plan.token
		msg := fmt.Sprintf("the %s annotation was not acted on: Secret %s is not managed by hookline; rotate it at its source (Sealed Secrets, External Secrets…) and hookline keeps the previous value signing for the grace period",
			hooklinev1.AnnotationRotateSecret, secret.Name)
		conditions.Set(&st.Conditions, ep.Generation, hooklinev1.ConditionSecretRotation, metav1.ConditionFalse, hooklinev1.ReasonUserManagedSecret, msg, now)
		logf.FromContext(ctx).V(1).Info("rotation refused: user-managed Secret", "endpoint", client.ObjectKeyFromObject(ep), "secret", secret.Name)
		r.Recorder.Eventf(ep, nil, corev1.EventTypeWarning, hooklinev1.EventRotationRefused, "RotateSecret", "%s", msg)
	case secretRotate:
		data, err := newSigningSecretData(ep)
		if err != nil {
			return nil, "", err
		}
		secret = secret.DeepCopy()
		secret.Data = data
		if plan.token != "" {
			metav1.SetMetaDataAnnotation(&secret.ObjectMeta, rotatedForAnnotation, plan.token)
		}
		// The write carries the resourceVersion read: a stale read cannot rotate twice.
		if err := r.Update(ctx, secret); err != nil {
			if p := forbiddenToWrite(err, ep.Namespace); p != nil {
				return nil, p.msg, nil
			}
			return nil, "", err
		}
		if plan.token != "" {
			st.LastHandledRotateSecret = plan.token
		}
		conditions.Set(&st.Conditions, ep.Generation, hooklinev1.ConditionSecretRotation, metav1.ConditionTrue, hooklinev1.ReasonRotated,
			fmt.Sprintf("rotated; the previous secret keeps signing for %s", ep.RotationGracePeriod()), now)
		logf.FromContext(ctx).V(1).Info("rotated", "endpoint", client.ObjectKeyFromObject(ep), "token", plan.token, "gracePeriod", ep.RotationGracePeriod())
		r.Recorder.Eventf(ep, nil, corev1.EventTypeNormal, hooklinev1.EventSecretRotated, "RotateSecret",
			"signing secret rotated; the previous one keeps signing for %s", ep.RotationGracePeriod())
	case secretRotatedAlready:
		st.LastHandledRotateSecret = plan.token
	}
	return secret, "", nil
}

// describeSigning fills the status fields that describe the signing secrets (never a
// value) and says when the endpoint must be looked at again: when a grace period ends.
func describeSigning(st *hooklinev1.WebhookEndpointStatus, value string, kr keyring.Keyring, now time.Time) secretOutcome {
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
	return out
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
