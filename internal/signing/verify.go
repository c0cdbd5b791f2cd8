package signing

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DefaultTolerance is how far a request's timestamp may be from now, either way.
const DefaultTolerance = 5 * time.Minute

// Verification errors; the returned errors wrap one of these with details.
var (
	ErrNoMatchingSignature = errors.New("no signature matches")
	ErrTimestamp           = errors.New("timestamp outside the tolerance")
	ErrMalformedHeader     = errors.New("malformed signature header")
	ErrUnknownVersion      = errors.New("unknown signature version")
	ErrDigestMismatch      = errors.New("content-digest does not match the body")
)

// Verifier checks signatures the way a receiver does.
type Verifier struct {
	// Keys are the receiver's secrets (HMAC or Ed25519 seeds).
	Keys []Key
	// PublicKeys are Ed25519 verification keys, for receivers that hold no seed.
	PublicKeys []ed25519.PublicKey
	// Tolerance defaults to DefaultTolerance.
	Tolerance time.Duration
	// Now defaults to time.Now.
	Now func() time.Time
}

func (v Verifier) checkTimestamp(ts int64) error {
	tol := v.Tolerance
	if tol <= 0 {
		tol = DefaultTolerance
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	diff := now().Sub(time.Unix(ts, 0))
	if diff > tol || diff < -tol {
		return fmt.Errorf("%w: %s away from now, the tolerance is %s", ErrTimestamp, diff.Round(time.Second), tol)
	}
	return nil
}

func (v Verifier) publicKeys() []ed25519.PublicKey {
	keys := append([]ed25519.PublicKey(nil), v.PublicKeys...)
	for _, k := range v.Keys {
		if k.alg == Ed25519 {
			keys = append(keys, k.PublicKey())
		}
	}
	return keys
}

func parseTimestamp(s string) (int64, error) {
	ts, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: timestamp %q is not Unix seconds", ErrMalformedHeader, truncate(s, 32))
	}
	return ts, nil
}

// StandardWebhooks verifies webhook-id, webhook-timestamp and webhook-signature.
// Entries of unknown versions are skipped, as the specification requires; the request
// is refused only when no entry matches.
func (v Verifier) StandardWebhooks(id, timestamp, signature string, body []byte) error {
	ts, err := parseTimestamp(timestamp)
	if err != nil {
		return err
	}
	if err := v.checkTimestamp(ts); err != nil {
		return err
	}
	content := standardWebhooksContent(id, ts, body)
	known := 0
	for _, entry := range strings.Fields(signature) {
		version, sigText, ok := strings.Cut(entry, ",")
		if !ok {
			return fmt.Errorf("%w: entry %q is not <version>,<signature>", ErrMalformedHeader, truncate(entry, 16))
		}
		sig, err := base64.StdEncoding.DecodeString(sigText)
		if err != nil {
			continue
		}
		switch version {
		case "v1":
			known++
			for _, k := range v.Keys {
				if k.alg != HMACSHA256 {
					continue
				}
				mac := hmac.New(sha256.New, k.hmacKey)
				mac.Write(content)
				if hmac.Equal(mac.Sum(nil), sig) {
					return nil
				}
			}
		case "v1a":
			known++
			for _, pub := range v.publicKeys() {
				if ed25519.Verify(pub, content, sig) {
					return nil
				}
			}
		}
	}
	if known == 0 {
		return fmt.Errorf("%w: no v1 or v1a entry in webhook-signature", ErrUnknownVersion)
	}
	return ErrNoMatchingSignature
}

// HMACTimestamp verifies a Stripe-style "t=<unix>,v1=<hex>,…" header.
func (v Verifier) HMACTimestamp(header string, body []byte) error {
	var tsText string
	var sigs [][]byte
	unknown := 0
	for _, part := range strings.Split(header, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return fmt.Errorf("%w: %q is not key=value", ErrMalformedHeader, truncate(part, 16))
		}
		switch k {
		case "t":
			tsText = val
		case "v1":
			sig, err := hex.DecodeString(val)
			if err != nil {
				return fmt.Errorf("%w: v1 is not hex", ErrMalformedHeader)
			}
			sigs = append(sigs, sig)
		default:
			unknown++
		}
	}
	if tsText == "" {
		return fmt.Errorf("%w: no t= timestamp", ErrMalformedHeader)
	}
	ts, err := parseTimestamp(tsText)
	if err != nil {
		return err
	}
	if len(sigs) == 0 {
		if unknown > 0 {
			return fmt.Errorf("%w: no v1 signature", ErrUnknownVersion)
		}
		return fmt.Errorf("%w: no v1 signature", ErrMalformedHeader)
	}
	if err := v.checkTimestamp(ts); err != nil {
		return err
	}
	for _, k := range v.Keys {
		if k.alg != HMACSHA256 {
			continue
		}
		want := hmacTimestamp(k.text, tsText, body)
		for _, sig := range sigs {
			if hmac.Equal(want, sig) {
				return nil
			}
		}
	}
	return ErrNoMatchingSignature
}

// HTTPRequest is what an RFC 9421 verifier looks at.
type HTTPRequest struct {
	Method    string
	TargetURI string
	Header    http.Header
	Body      []byte
}

// HTTPMessage verifies RFC 9421 signatures with Ed25519 keys and the RFC 9530
// Content-Digest; any one valid signature label is enough.
func (v Verifier) HTTPMessage(r HTTPRequest) error {
	digest := r.Header.Get(HeaderContentDigest)
	if digest == "" {
		return fmt.Errorf("%w: no content-digest", ErrMalformedHeader)
	}
	if err := checkContentDigest(digest, r.Body); err != nil {
		return err
	}
	inputs, err := parseSFDictionary(strings.Join(r.Header.Values(HeaderSignatureInput), ", "))
	if err != nil {
		return fmt.Errorf("%w: signature-input: %v", ErrMalformedHeader, err)
	}
	sigs, err := parseSFDictionary(strings.Join(r.Header.Values(HeaderSignature), ", "))
	if err != nil {
		return fmt.Errorf("%w: signature: %v", ErrMalformedHeader, err)
	}
	if len(inputs) == 0 {
		return fmt.Errorf("%w: no signature-input", ErrMalformedHeader)
	}
	var lastErr error = ErrNoMatchingSignature
	for _, in := range inputs {
		if err := v.verifyLabel(r, in, sigs); err != nil {
			lastErr = err
			continue
		}
		return nil
	}
	return lastErr
}

func (v Verifier) verifyLabel(r HTTPRequest, in sfDictEntry, sigs []sfDictEntry) error {
	if !in.member.isList {
		return fmt.Errorf("%w: signature-input %s is not an inner list", ErrMalformedHeader, in.key)
	}
	var sig []byte
	for _, s := range sigs {
		if s.key == in.key && !s.member.isList && s.member.item.kind == sfBytes {
			sig = s.member.item.bytes
		}
	}
	if sig == nil {
		return fmt.Errorf("%w: no signature for label %s", ErrMalformedHeader, in.key)
	}
	if alg, err := in.member.param("alg"); err == nil && (alg.kind != sfStringKind || alg.str != "ed25519") {
		return fmt.Errorf("%w: alg %q", ErrUnknownVersion, truncate(alg.str, 16))
	}
	created, err := in.member.param("created")
	if err != nil || created.kind != sfInteger {
		return fmt.Errorf("%w: %s has no created", ErrMalformedHeader, in.key)
	}
	if err := v.checkTimestamp(created.num); err != nil {
		return err
	}
	components := make([]component, 0, len(in.member.list))
	coversDigest := false
	for _, it := range in.member.list {
		if it.kind != sfStringKind {
			return fmt.Errorf("%w: component identifiers are strings", ErrMalformedHeader)
		}
		value, err := componentValue(r, it.str)
		if err != nil {
			return err
		}
		coversDigest = coversDigest || it.str == HeaderContentDigest
		components = append(components, component{it.str, value})
	}
	if !coversDigest && len(r.Body) > 0 {
		return fmt.Errorf("%w: %s does not cover content-digest, so the body is not signed", ErrMalformedHeader, in.key)
	}
	base := signatureBase(components, in.member.serializeInnerList())
	for _, pub := range v.publicKeys() {
		if ed25519.Verify(pub, base, sig) {
			return nil
		}
	}
	return ErrNoMatchingSignature
}

func componentValue(r HTTPRequest, name string) (string, error) {
	switch name {
	case "@method":
		return strings.ToUpper(r.Method), nil
	case "@target-uri":
		return r.TargetURI, nil
	}
	if strings.HasPrefix(name, "@") {
		return "", fmt.Errorf("%w: derived component %s is not supported", ErrMalformedHeader, name)
	}
	values := r.Header.Values(name)
	if len(values) == 0 {
		return "", fmt.Errorf("%w: covered header %s is missing", ErrMalformedHeader, name)
	}
	for i := range values {
		values[i] = strings.TrimSpace(values[i])
	}
	return strings.Join(values, ", "), nil
}

func checkContentDigest(header string, body []byte) error {
	entries, err := parseSFDictionary(header)
	if err != nil {
		return fmt.Errorf("%w: content-digest: %v", ErrMalformedHeader, err)
	}
	sum := sha256.Sum256(body)
	for _, e := range entries {
		if e.key == "sha-256" && e.member.item.kind == sfBytes {
			if hmac.Equal(e.member.item.bytes, sum[:]) {
				return nil
			}
			return ErrDigestMismatch
		}
	}
	return fmt.Errorf("%w: content-digest has no sha-256", ErrMalformedHeader)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
