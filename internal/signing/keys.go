// Package signing signs webhook requests in each scheme hookline supports (Standard
// Webhooks v1 and v1a, Stripe-style HMAC with a timestamp, RFC 9421 HTTP Message
// Signatures) and verifies them the way receivers do. It knows nothing of Kubernetes.
package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Prefixes of the string forms of secrets and keys.
const (
	HMACSecretPrefix   = "whsec_"
	Ed25519SeedPrefix  = "whsk_"
	Ed25519PublicPrefx = "whpk_"
)

// MinHMACSecretBytes is the shortest HMAC key accepted, as Standard Webhooks requires.
const MinHMACSecretBytes = 24

// Algorithm is the kind of a signing key.
type Algorithm int

const (
	HMACSHA256 Algorithm = iota + 1
	Ed25519
)

func (a Algorithm) String() string {
	switch a {
	case HMACSHA256:
		return "HMAC-SHA256"
	case Ed25519:
		return "Ed25519"
	}
	return "unknown"
}

// Key is a parsed signing secret. Its fields are private so a Key never prints its
// material: fmt and loggers see only the algorithm and the hint.
type Key struct {
	alg      Algorithm
	text     string // the whole secret string: Stripe-style HMAC uses it as the key
	hmacKey  []byte
	private  ed25519.PrivateKey
	hintText string
}

// Algorithm reports what kind of key this is.
func (k Key) Algorithm() Algorithm { return k.alg }

// String never reveals the secret.
func (k Key) String() string { return fmt.Sprintf("%s key %s", k.alg, k.hintText) }

// GoString never reveals the secret, even under %#v.
func (k Key) GoString() string { return k.String() }

// Hint is the first 8 characters of the secret string and "...".
func (k Key) Hint() string { return k.hintText }

// PublicKey returns the Ed25519 public key; nil for HMAC keys.
func (k Key) PublicKey() ed25519.PublicKey {
	if k.alg != Ed25519 {
		return nil
	}
	return k.private.Public().(ed25519.PublicKey)
}

// Hint returns the first 8 characters of a secret and "...": enough to tell secrets
// apart, far too little to use one.
func Hint(secret string) string {
	if len(secret) <= 8 {
		return "..."
	}
	return secret[:8] + "..."
}

// ParseSecret parses a signing secret: "whsec_" + base64 of at least 24 bytes for
// HMAC-SHA256, or "whsk_" + base64 of a 32-byte Ed25519 seed. Errors never contain the
// secret.
func ParseSecret(secret string) (Key, error) {
	switch {
	case strings.HasPrefix(secret, HMACSecretPrefix):
		raw, err := decodeBase64(secret[len(HMACSecretPrefix):])
		if err != nil {
			return Key{}, fmt.Errorf("signing secret: the part after %q is not valid base64", HMACSecretPrefix)
		}
		if len(raw) < MinHMACSecretBytes {
			return Key{}, fmt.Errorf("signing secret: %d bytes after %q, at least %d are required", len(raw), HMACSecretPrefix, MinHMACSecretBytes)
		}
		return Key{alg: HMACSHA256, text: secret, hmacKey: raw, hintText: Hint(secret)}, nil
	case strings.HasPrefix(secret, Ed25519SeedPrefix):
		raw, err := decodeBase64(secret[len(Ed25519SeedPrefix):])
		if err != nil {
			return Key{}, fmt.Errorf("signing secret: the part after %q is not valid base64", Ed25519SeedPrefix)
		}
		if len(raw) != ed25519.SeedSize {
			return Key{}, fmt.Errorf("signing secret: an Ed25519 seed is %d bytes, this one is %d", ed25519.SeedSize, len(raw))
		}
		return Key{alg: Ed25519, text: secret, private: ed25519.NewKeyFromSeed(raw), hintText: Hint(secret)}, nil
	case secret == "":
		return Key{}, errors.New("signing secret: empty")
	default:
		return Key{}, fmt.Errorf("signing secret: must start with %q (HMAC-SHA256) or %q (Ed25519)", HMACSecretPrefix, Ed25519SeedPrefix)
	}
}

// ParsePublicKey parses "whpk_" + base64 of a 32-byte Ed25519 public key.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	if !strings.HasPrefix(s, Ed25519PublicPrefx) {
		return nil, fmt.Errorf("public key: must start with %q", Ed25519PublicPrefx)
	}
	raw, err := decodeBase64(s[len(Ed25519PublicPrefx):])
	if err != nil {
		return nil, fmt.Errorf("public key: the part after %q is not valid base64", Ed25519PublicPrefx)
	}
	if len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key: an Ed25519 public key is %d bytes, this one is %d", ed25519.PublicKeySize, len(raw))
	}
	return ed25519.PublicKey(raw), nil
}

// FormatPublicKey is the "whpk_" string form of an Ed25519 public key.
func FormatPublicKey(pub ed25519.PublicKey) string {
	return Ed25519PublicPrefx + base64.StdEncoding.EncodeToString(pub)
}

// KeyID is the RFC 9421 keyid of an Ed25519 public key: the hex of the first 16 bytes
// of its SHA-256, so receivers holding several keys can pick the right one.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:16])
}

// NewHMACSecret returns "whsec_" + base64 of 32 random bytes.
func NewHMACSecret() (string, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("generate secret: %w", err)
	}
	return HMACSecretPrefix + base64.StdEncoding.EncodeToString(raw), nil
}

// NewEd25519Secret returns "whsk_" + base64 of a random 32-byte seed and the matching
// "whpk_" public key.
func NewEd25519Secret() (secret, public string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate key: %w", err)
	}
	return Ed25519SeedPrefix + base64.StdEncoding.EncodeToString(priv.Seed()), FormatPublicKey(pub), nil
}

// NewSecret generates a secret of the given algorithm; public is empty for HMAC.
func NewSecret(alg Algorithm) (secret, public string, err error) {
	if alg == Ed25519 {
		return NewEd25519Secret()
	}
	s, err := NewHMACSecret()
	return s, "", err
}

// decodeBase64 accepts standard base64 with or without padding, as secrets are pasted
// from many tools.
func decodeBase64(s string) ([]byte, error) {
	if raw, err := base64.StdEncoding.DecodeString(s); err == nil {
		return raw, nil
	}
	return base64.RawStdEncoding.DecodeString(s)
}
