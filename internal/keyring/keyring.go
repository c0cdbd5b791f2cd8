// Package keyring is the format and the rules of an endpoint's keyring: the signing
// value the manager last saw and the replaced values that still sign until their grace
// period ends. It knows nothing of Kubernetes clients; the manager keeps the keyring
// in a Secret of its own (the data map here), and deliveries sign from it.
package keyring

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A change of the signing Secret (a rotation, or a user's Sealed Secret rolled over)
// never leaves a receiver holding a value that no longer signs.
const (
	keyCurrent  = "current"
	keyPrevious = "previous"
	nameSuffix  = "-signing-keyring"
	// MaxPrevious bounds how many replaced secrets keep signing at once.
	MaxPrevious = 10
)

// Previous is a replaced secret and when it stops signing.
type Previous struct {
	Secret    string    `json:"secret"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// Keyring is the decoded keyring.
type Keyring struct {
	Current  string
	Previous []Previous
}

// SecretName is the keyring Secret's name for an endpoint: a valid object name for
// any endpoint name.
func SecretName(endpoint string) string {
	name := endpoint + nameSuffix
	if len(name) <= 253 {
		return name
	}
	sum := sha256.Sum256([]byte(endpoint))
	return endpoint[:253-len(nameSuffix)-11] + "-" + hex.EncodeToString(sum[:5]) + nameSuffix
}

// Decode reads a keyring from the data of the Secret named secretName.
func Decode(secretName string, data map[string][]byte) (Keyring, error) {
	k := Keyring{Current: string(data[keyCurrent])}
	if raw := data[keyPrevious]; len(raw) > 0 {
		if err := json.Unmarshal(raw, &k.Previous); err != nil {
			return Keyring{}, fmt.Errorf("keyring Secret %s is corrupt (key %q)", secretName, keyPrevious)
		}
	}
	return k, nil
}

// Encode is the Secret data of the keyring.
func (k Keyring) Encode() map[string][]byte {
	prev, _ := json.Marshal(k.Previous)
	return map[string][]byte{keyCurrent: []byte(k.Current), keyPrevious: prev}
}

// Observe records the signing Secret's value: when it differs from the one last seen,
// that one keeps signing for the grace period. It reports whether the keyring changed.
func (k *Keyring) Observe(value string, grace time.Duration, now time.Time) bool {
	if value == k.Current {
		return false
	}
	if k.Current != "" && grace > 0 {
		k.Previous = append(k.Previous, Previous{Secret: k.Current, ExpiresAt: now.Add(grace)})
	}
	k.Current = value
	k.Prune(now)
	return true
}

// Prune drops expired and surplus previous secrets (the oldest go first) and any that
// equals the current one.
func (k *Keyring) Prune(now time.Time) bool {
	kept := k.Previous[:0]
	for _, p := range k.Previous {
		if p.ExpiresAt.After(now) && p.Secret != k.Current {
			kept = append(kept, p)
		}
	}
	sort.SliceStable(kept, func(i, j int) bool { return kept[i].ExpiresAt.Before(kept[j].ExpiresAt) })
	if len(kept) > MaxPrevious {
		kept = kept[len(kept)-MaxPrevious:]
	}
	changed := len(kept) != len(k.Previous)
	k.Previous = kept
	return changed
}

// SigningValues are the values that sign now: the current one first, then the
// previous ones, newest first.
func (k Keyring) SigningValues(now time.Time) []string {
	out := []string{k.Current}
	for i := len(k.Previous) - 1; i >= 0; i-- {
		if k.Previous[i].ExpiresAt.After(now) {
			out = append(out, k.Previous[i].Secret)
		}
	}
	return out
}

// ExpiresAt is when the last previous secret stops signing; nil when none signs.
func (k Keyring) ExpiresAt() *metav1.Time {
	if len(k.Previous) == 0 {
		return nil
	}
	t := metav1.NewTime(k.Previous[len(k.Previous)-1].ExpiresAt)
	return &t
}

// NextExpiry is when the earliest previous secret expires, for a requeue.
func (k Keyring) NextExpiry() (time.Time, bool) {
	if len(k.Previous) == 0 {
		return time.Time{}, false
	}
	return k.Previous[0].ExpiresAt, true
}
