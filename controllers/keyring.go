package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
)

// The keyring is a Secret the manager owns for every endpoint. It holds the secret
// value the manager last saw in the signing Secret and the previous values that still
// sign until their grace period ends. Deliveries sign from it, so a change of the
// signing Secret — a rotation, or a user's Sealed Secret rolled over — never leaves a
// receiver holding a value that no longer signs.
const (
	keyringKeyCurrent  = "current"
	keyringKeyPrevious = "previous"
	keyringSuffix      = "-signing-keyring"
	// maxPreviousSecrets bounds how many replaced secrets keep signing at once.
	maxPreviousSecrets = 10
)

// previousSecret is a replaced secret and when it stops signing.
type previousSecret struct {
	Secret    string    `json:"secret"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// keyring is the decoded keyring Secret.
type keyring struct {
	current  string
	previous []previousSecret
}

// keyringName is the keyring Secret's name: a valid object name for any endpoint name.
func keyringName(ep *hooklinev1.WebhookEndpoint) string {
	name := ep.Name + keyringSuffix
	if len(name) <= 253 {
		return name
	}
	sum := sha256.Sum256([]byte(ep.Name))
	return ep.Name[:253-len(keyringSuffix)-11] + "-" + hex.EncodeToString(sum[:5]) + keyringSuffix
}

func decodeKeyring(s *corev1.Secret) (keyring, error) {
	k := keyring{current: string(s.Data[keyringKeyCurrent])}
	if raw := s.Data[keyringKeyPrevious]; len(raw) > 0 {
		if err := json.Unmarshal(raw, &k.previous); err != nil {
			return keyring{}, fmt.Errorf("keyring Secret %s is corrupt (key %q)", s.Name, keyringKeyPrevious)
		}
	}
	return k, nil
}

func (k keyring) encode() map[string][]byte {
	prev, _ := json.Marshal(k.previous)
	return map[string][]byte{keyringKeyCurrent: []byte(k.current), keyringKeyPrevious: prev}
}

// observe records the signing Secret's value: when it differs from the one last seen,
// that one keeps signing for the grace period. It reports whether the keyring changed.
func (k *keyring) observe(value string, grace time.Duration, now time.Time) bool {
	if value == k.current {
		return false
	}
	if k.current != "" && grace > 0 {
		k.previous = append(k.previous, previousSecret{Secret: k.current, ExpiresAt: now.Add(grace)})
	}
	k.current = value
	k.prune(now)
	return true
}

// prune drops expired and surplus previous secrets (the oldest go first) and any that
// equals the current one.
func (k *keyring) prune(now time.Time) bool {
	kept := k.previous[:0]
	for _, p := range k.previous {
		if p.ExpiresAt.After(now) && p.Secret != k.current {
			kept = append(kept, p)
		}
	}
	sort.SliceStable(kept, func(i, j int) bool { return kept[i].ExpiresAt.Before(kept[j].ExpiresAt) })
	if len(kept) > maxPreviousSecrets {
		kept = kept[len(kept)-maxPreviousSecrets:]
	}
	changed := len(kept) != len(k.previous)
	k.previous = kept
	return changed
}

// signingValues are the values that sign now: the current one first, then the
// previous ones, newest first.
func (k keyring) signingValues(now time.Time) []string {
	out := []string{k.current}
	for i := len(k.previous) - 1; i >= 0; i-- {
		if k.previous[i].ExpiresAt.After(now) {
			out = append(out, k.previous[i].Secret)
		}
	}
	return out
}

// expiresAt is when the last previous secret stops signing; nil when none signs.
func (k keyring) expiresAt() *metav1.Time {
	if len(k.previous) == 0 {
		return nil
	}
	t := metav1.NewTime(k.previous[len(k.previous)-1].ExpiresAt)
	return &t
}

// nextExpiry is when the earliest previous secret expires, for a requeue.
func (k keyring) nextExpiry() (time.Time, bool) {
	if len(k.previous) == 0 {
		return time.Time{}, false
	}
	return k.previous[0].ExpiresAt, true
}
