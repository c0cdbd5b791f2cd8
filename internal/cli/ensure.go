package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/urlkey"
)

// eventNamePattern is the CRD's rule for event names, checked here first so that a bad
// name gets one clear line before anything is sent.
var eventNamePattern = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$`)

type ensureOptions struct {
	url, description, name string
	events, labels         []string
	paused                 bool
	showSecret             bool
	rotate                 bool
	rotateIfUnretrievable  bool
	forceConflicts         bool
}

func (a *app) ensureCommand() *cobra.Command {
	o := &ensureOptions{}
	cmd := &cobra.Command{
		Use:   "ensure --url URL --events a,b",
		Short: "Register a URL for events, or update its endpoint; safe to run again",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return a.ensure(o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "", "the receiver's URL (required)")
	f.StringSliceVar(&o.events, "events", nil, `event types, comma-separated, or "*" for every type (required)`)
	f.StringVar(&o.description, "description", "", "free text")
	f.BoolVar(&o.paused, "paused", false, "create or set the endpoint paused")
	f.StringArrayVar(&o.labels, "label", nil, "a label k=v (repeatable)")
	f.StringVar(&o.name, "name", "", "the endpoint's name when it is created (default: derived from the URL)")
	f.BoolVar(&o.showSecret, "show-secret", false, "print the signing secret, if your RBAC allows reading it")
	f.BoolVar(&o.rotate, "rotate", false, "rotate the signing secret and wait until it is done")
	f.BoolVar(&o.rotateIfUnretrievable, "rotate-if-unretrievable", false, "rotate only when the signing secret cannot be read")
	f.BoolVar(&o.forceConflicts, "force-conflicts", false, "take over fields another manager (a GitOps tool) owns")
	f.StringVarP(&a.output, "output", "o", "", "json or yaml: print the endpoint")
	return cmd
}

func (o *ensureOptions) validate() (normalized string, labels map[string]string, err error) {
	if o.url == "" {
		return "", nil, fmt.Errorf("--url is required")
	}
	normalized, err = urlkey.Normalize(o.url)
	if err != nil {
		return "", nil, fmt.Errorf("--url %q: %v", o.url, strings.TrimPrefix(err.Error(), "url: "))
	}
	if len(o.events) == 0 {
		return "", nil, fmt.Errorf(`--events is required: event types like order.created, or "*"`)
	}
	for _, e := range o.events {
		if e == "*" && len(o.events) > 1 {
			return "", nil, fmt.Errorf(`--events: "*" subscribes to every type and must be the only entry`)
		}
		if e != "*" && (len(e) > 128 || !eventNamePattern.MatchString(e)) {
			return "", nil, fmt.Errorf("--events: %q is not an event type: lower-case and dotted like order.created; wildcard fragments such as order.* are not supported", e)
		}
	}
	labels = map[string]string{}
	for _, l := range o.labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return "", nil, fmt.Errorf("--label %q: want key=value", l)
		}
		labels[k] = v
	}
	if o.rotate && o.rotateIfUnretrievable {
		return "", nil, fmt.Errorf("--rotate and --rotate-if-unretrievable exclude each other")
	}
	return normalized, labels, nil
}

func (a *app) ensure(o *ensureOptions) error {
	normalized, labels, err := o.validate()
	if err != nil {
		return err
	}
	if a.output != "" && a.output != "json" && a.output != "yaml" {
		return fmt.Errorf("--output %q: json or yaml", a.output)
	}
	ctx, cancel := a.context()
	defer cancel()

	existing, err := a.findByURL(ctx, normalized)
	if err != nil {
		return err
	}
	name := o.name
	if existing != nil {
		name = existing.Name
	} else if name == "" {
		name = nameFromURL(normalized)
	}
	specURL := normalized
	if existing != nil {
		specURL = existing.Spec.URL // the same URL as it is written; never rewrite a GitOps value
	}
	desired := map[string]any{
		"apiVersion": hooklinev1.GroupVersion.String(),
		"kind":       "WebhookEndpoint",
		"metadata":   map[string]any{"name": name, "namespace": a.ns},
		"spec": map[string]any{
			"url":    specURL,
			"events": toAny(o.events),
		},
	}
	spec := desired["spec"].(map[string]any)
	if o.description != "" {
		spec["description"] = o.description
	}
	if o.paused {
		spec["paused"] = true
	}
	if len(labels) > 0 {
		meta := desired["metadata"].(map[string]any)
		l := map[string]any{}
		for k, v := range labels {
			l[k] = v
		}
		meta["labels"] = l
	}
	u := &unstructured.Unstructured{Object: desired}
	opts := []client.PatchOption{client.FieldOwner(FieldManager)}
	if o.forceConflicts {
		opts = append(opts, client.ForceOwnership)
	}
	if err := a.client.Patch(ctx, u, client.Apply, opts...); err != nil {
		if apierrors.IsConflict(err) {
			return fmt.Errorf("webhookendpoint/%s: %s (another manager owns these fields; --force-conflicts takes them over)", name, oneLine(err))
		}
		return fmt.Errorf("webhookendpoint/%s: %s", name, oneLine(err))
	}
	verb := "configured"
	switch {
	case existing == nil:
		verb = "created"
	case u.GetResourceVersion() == existing.ResourceVersion:
		verb = "unchanged"
	}

	ep, err := a.waitEndpoint(ctx, name, func(ep *hooklinev1.WebhookEndpoint) bool { return readyObserved(ep) })
	if err != nil {
		return err
	}
	if reason := readyReason(ep); reason != hooklinev1.ReasonActive && reason != hooklinev1.ReasonPaused {
		return fmt.Errorf("webhookendpoint/%s %s but not ready: %s", name, verb, readyMessage(ep))
	}

	rotated := false
	if o.rotate {
		if ep, err = a.setToken(ctx, name, hooklinev1.AnnotationRotateSecret); err != nil {
			return err
		}
		rotated = true
	}
	secret, why := "", ""
	if o.showSecret || o.rotateIfUnretrievable {
		secret, why, err = a.readSecret(ctx, ep)
		if err != nil {
			return err
		}
		if why != "" && o.rotateIfUnretrievable {
			if userManaged, err := a.userManagedSecret(ctx, ep); err != nil {
				return err
			} else if userManaged {
				return fmt.Errorf("webhookendpoint/%s: the signing Secret %s is managed outside hookline; rotate it at its source", name, ep.Status.SecretName)
			}
			if ep, err = a.setToken(ctx, name, hooklinev1.AnnotationRotateSecret); err != nil {
				return err
			}
			rotated = true
			secret, why, err = a.readSecret(ctx, ep)
			if err != nil {
				return err
			}
		}
	}
	if a.output != "" {
		return a.print(ep)
	}
	if rotated && verb == "unchanged" {
		verb = "configured"
	}
	fmt.Fprintf(a.out, "webhookendpoint/%s %s\n", name, verb)
	if rotated {
		fmt.Fprintf(a.out, "signing secret rotated; the previous one signs until %s\n", formatTime(ep.Status.PreviousSecretsExpireAt))
	}
	if o.showSecret {
		if why != "" {
			fmt.Fprintf(a.err, "signing secret not shown: %s\n", why)
		} else {
			fmt.Fprintf(a.out, "signing secret: %s\n", secret)
		}
	}
	return nil
}

// findByURL returns the namespace's endpoint holding this URL: by the spec.url field
// selector first, then by comparing normalised URLs (a URL written another way in Git).
func (a *app) findByURL(ctx context.Context, normalized string) (*hooklinev1.WebhookEndpoint, error) {
	var list hooklinev1.WebhookEndpointList
	if err := a.client.List(ctx, &list, client.InNamespace(a.ns),
		client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("spec.url", normalized)}); err != nil {
		return nil, fmt.Errorf("list endpoints: %s", oneLine(err))
	}
	if len(list.Items) == 0 {
		if err := a.client.List(ctx, &list, client.InNamespace(a.ns)); err != nil {
			return nil, fmt.Errorf("list endpoints: %s", oneLine(err))
		}
	}
	var owner *hooklinev1.WebhookEndpoint
	for i := range list.Items {
		ep := &list.Items[i]
		if n, err := urlkey.Normalize(ep.Spec.URL); err != nil || n != normalized {
			continue
		}
		if owner == nil || urlkey.OwnsBefore(urlHolder(ep), urlHolder(owner)) {
			owner = ep
		}
	}
	return owner, nil
}

func urlHolder(ep *hooklinev1.WebhookEndpoint) urlkey.Holder {
	return urlkey.Holder{Name: ep.Name, Created: ep.CreationTimestamp.Time}
}

// nameFromURL derives a valid, stable object name from a URL: its host and path, and
// a short hash of the whole URL so that similar URLs do not collide.
func nameFromURL(normalized string) string {
	u, _ := url.Parse(normalized)
	base := strings.ToLower(u.Hostname() + "-" + u.Path)
	var b strings.Builder
	dash := false
	for _, r := range base {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	name := strings.Trim(b.String(), "-")
	if len(name) > 45 {
		name = strings.Trim(name[:45], "-")
	}
	sum := sha256.Sum256([]byte(normalized))
	return name + "-" + hex.EncodeToString(sum[:3])
}

// readSecret returns the plaintext signing secret, or why it cannot be read (RBAC, a
// missing Secret). The decision is the API server's: a SelfSubjectAccessReview first,
// so the answer is the same as kubectl auth can-i.
func (a *app) readSecret(ctx context.Context, ep *hooklinev1.WebhookEndpoint) (secret, why string, err error) {
	review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: a.ns, Verb: "get", Resource: "secrets", Name: ep.Status.SecretName},
	}}
	if err := a.client.Create(ctx, review); err != nil {
		return "", "", fmt.Errorf("access review: %s", oneLine(err))
	}
	if !review.Status.Allowed {
		return "", fmt.Sprintf("your RBAC does not allow get on secrets/%s in namespace %s", ep.Status.SecretName, a.ns), nil
	}
	var s corev1.Secret
	if err := a.client.Get(ctx, client.ObjectKey{Namespace: a.ns, Name: ep.Status.SecretName}, &s); err != nil {
		if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
			return "", oneLine(err), nil
		}
		return "", "", err
	}
	v := string(s.Data[hooklinev1.SecretKeySigningSecret])
	if v == "" {
		return "", fmt.Sprintf("Secret %s has no key %s", s.Name, hooklinev1.SecretKeySigningSecret), nil
	}
	return v, "", nil
}

// userManagedSecret reports whether the endpoint's Secret is not owned by the endpoint.
// Without the right to read the Secret's metadata, the manager's own status tells:
// a managed secret is what it creates by default.
func (a *app) userManagedSecret(ctx context.Context, ep *hooklinev1.WebhookEndpoint) (bool, error) {
	var s metav1.PartialObjectMetadata
	s.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	err := a.client.Get(ctx, client.ObjectKey{Namespace: a.ns, Name: ep.Status.SecretName}, &s)
	if apierrors.IsForbidden(err) || apierrors.IsNotFound(err) {
		return ep.Spec.Signing.SecretName != "" && ep.Spec.Signing.SecretName != ep.Name+hooklinev1.DefaultSecretSuffix, nil
	}
	if err != nil {
		return false, err
	}
	return !metav1.IsControlledBy(&s, ep), nil
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func formatTime(t *metav1.Time) string {
	if t == nil {
		return "now (no grace period)"
	}
	return t.UTC().Format(time.RFC3339)
}
