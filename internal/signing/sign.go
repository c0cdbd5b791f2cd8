package signing

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Scheme is a wire format of signatures.
type Scheme int

const (
	StandardWebhooks Scheme = iota + 1
	HMACTimestamp
	HTTPMessageSignatures
)

// Headers every scheme relies on.
const (
	HeaderWebhookID        = "webhook-id"
	HeaderWebhookTimestamp = "webhook-timestamp"
	HeaderWebhookSignature = "webhook-signature"
	HeaderContentDigest    = "content-digest"
	HeaderSignature        = "signature"
	HeaderSignatureInput   = "signature-input"
	DefaultHMACHeader      = "hookline-signature"
)

// Request is what is signed: the message id, the attempt's Unix time and the exact body
// bytes; HTTPMessageSignatures also covers the method, target URI and content type.
type Request struct {
	ID          string
	Timestamp   int64
	Body        []byte
	Method      string
	TargetURI   string
	ContentType string
}

// Header is one header to set on the request.
type Header struct {
	Name  string
	Value string
}

// Signer signs requests in one scheme.
type Signer struct {
	Scheme Scheme
	// HeaderName is the HMACTimestamp header; DefaultHMACHeader when empty.
	HeaderName string
}

// Sign returns the signature headers for r, signed with every key (current key first;
// the others are still inside their grace period). The first header returned is the one
// a human looks at: the signature itself.
func (s Signer) Sign(r Request, keys []Key) ([]Header, error) {
	if len(keys) == 0 {
		return nil, errors.New("sign: no signing key")
	}
	switch s.Scheme {
	case StandardWebhooks:
		v, err := SignStandardWebhooks(r.ID, r.Timestamp, r.Body, keys)
		if err != nil {
			return nil, err
		}
		return []Header{{HeaderWebhookSignature, v}}, nil
	case HMACTimestamp:
		v, err := SignHMACTimestamp(r.Timestamp, r.Body, keys)
		if err != nil {
			return nil, err
		}
		name := s.HeaderName
		if name == "" {
			name = DefaultHMACHeader
		}
		return []Header{{name, v}}, nil
	case HTTPMessageSignatures:
		return SignHTTPMessage(r, keys)
	}
	return nil, fmt.Errorf("sign: unknown scheme %d", s.Scheme)
}

// standardWebhooksContent is "{id}.{timestamp}.{body}", built once per request so the
// body is copied at most once whatever the number of keys.
func standardWebhooksContent(id string, ts int64, body []byte) []byte {
	tsText := strconv.FormatInt(ts, 10)
	buf := make([]byte, 0, len(id)+len(tsText)+2+len(body))
	buf = append(buf, id...)
	buf = append(buf, '.')
	buf = append(buf, tsText...)
	buf = append(buf, '.')
	return append(buf, body...)
}

// SignStandardWebhooks returns the webhook-signature value: "v1,<b64>" for each HMAC key
// and "v1a,<b64>" for each Ed25519 key, space-separated, in the order of keys.
func SignStandardWebhooks(id string, ts int64, body []byte, keys []Key) (string, error) {
	var b strings.Builder
	var content []byte // only Ed25519 needs the content as one slice
	tsText := strconv.FormatInt(ts, 10)
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		switch k.alg {
		case HMACSHA256:
			mac := hmac.New(sha256.New, k.hmacKey)
			mac.Write([]byte(id))
			mac.Write([]byte{'.'})
			mac.Write([]byte(tsText))
			mac.Write([]byte{'.'})
			mac.Write(body)
			b.WriteString("v1,")
			b.WriteString(base64.StdEncoding.EncodeToString(mac.Sum(nil)))
		case Ed25519:
			if content == nil {
				content = standardWebhooksContent(id, ts, body)
			}
			b.WriteString("v1a,")
			b.WriteString(base64.StdEncoding.EncodeToString(ed25519.Sign(k.private, content)))
		default:
			return "", errors.New("sign: key has no algorithm")
		}
	}
	return b.String(), nil
}

// SignHMACTimestamp returns the Stripe-style value "t=<ts>,v1=<hex>[,v1=<hex>…]": hex
// HMAC-SHA256 of "{t}.{body}" keyed with the whole secret string, current key first.
func SignHMACTimestamp(ts int64, body []byte, keys []Key) (string, error) {
	tsText := strconv.FormatInt(ts, 10)
	var b strings.Builder
	b.WriteString("t=")
	b.WriteString(tsText)
	for _, k := range keys {
		if k.alg != HMACSHA256 {
			return "", errors.New("sign: HMACTimestamp needs HMAC-SHA256 keys")
		}
		b.WriteString(",v1=")
		b.WriteString(hex.EncodeToString(hmacTimestamp(k.text, tsText, body)))
	}
	return b.String(), nil
}

func hmacTimestamp(secret, tsText string, body []byte) []byte {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(tsText))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return mac.Sum(nil)
}

// SchemeOf names the scheme and algorithm of a signature value this package made, by
// its form (for records that must say how a request was signed, never with what).
func SchemeOf(signature string) string {
	switch {
	case signature == "":
		return ""
	case strings.HasPrefix(signature, "v1a,"):
		return "StandardWebhooks/Ed25519"
	case strings.HasPrefix(signature, "v1,"):
		return "StandardWebhooks"
	case strings.HasPrefix(signature, "t="):
		return "HMACTimestamp"
	default:
		return "HTTPMessageSignatures"
	}
}
