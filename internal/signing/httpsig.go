package signing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
)

// coveredComponents are what hookline's RFC 9421 signatures cover, in order.
var coveredComponents = []string{"@method", "@target-uri", "content-type", "content-digest", "webhook-id"}

// ContentDigest is the RFC 9530 Content-Digest value of body with sha-256.
func ContentDigest(body []byte) string {
	sum := sha256.Sum256(body)
	return "sha-256=:" + base64.StdEncoding.EncodeToString(sum[:]) + ":"
}

// component is one covered component of a signature base: its identifier (without
// quotes) and its canonical value.
type component struct {
	name  string
	value string
}

// signatureParams serialises the @signature-params inner list (RFC 9421 section 2.3).
// alg is left out when empty.
func signatureParams(names []string, created int64, keyID, alg string) string {
	var b strings.Builder
	b.WriteByte('(')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(sfString(n))
	}
	b.WriteString(");created=")
	b.WriteString(strconv.FormatInt(created, 10))
	if keyID != "" {
		b.WriteString(";keyid=")
		b.WriteString(sfString(keyID))
	}
	if alg != "" {
		b.WriteString(";alg=")
		b.WriteString(sfString(alg))
	}
	return b.String()
}

// signatureBase builds the RFC 9421 section 2.5 signature base.
func signatureBase(components []component, params string) []byte {
	var b strings.Builder
	for _, c := range components {
		b.WriteByte('"')
		b.WriteString(c.name)
		b.WriteString(`": `)
		b.WriteString(c.value)
		b.WriteByte('\n')
	}
	b.WriteString(`"@signature-params": `)
	b.WriteString(params)
	return []byte(b.String())
}

// SignHTTPMessage signs r per RFC 9421 with RFC 9530's Content-Digest: one signature
// per Ed25519 key, labelled sig1, sig2, … in the order of keys. It returns Signature,
// Signature-Input and Content-Digest, in that order.
func SignHTTPMessage(r Request, keys []Key) ([]Header, error) {
	digest := ContentDigest(r.Body)
	values := []string{strings.ToUpper(r.Method), r.TargetURI, r.ContentType, digest, r.ID}
	components := make([]component, len(coveredComponents))
	for i, n := range coveredComponents {
		components[i] = component{n, values[i]}
	}
	var sigs, inputs strings.Builder
	for i, k := range keys {
		if k.alg != Ed25519 {
			return nil, errors.New("sign: HTTPMessageSignatures needs Ed25519 keys")
		}
		label := "sig" + strconv.Itoa(i+1)
		params := signatureParams(coveredComponents, r.Timestamp, KeyID(k.PublicKey()), "ed25519")
		sig := ed25519.Sign(k.private, signatureBase(components, params))
		if i > 0 {
			sigs.WriteString(", ")
			inputs.WriteString(", ")
		}
		inputs.WriteString(label + "=" + params)
		sigs.WriteString(label + "=:" + base64.StdEncoding.EncodeToString(sig) + ":")
	}
	return []Header{
		{HeaderSignature, sigs.String()},
		{HeaderSignatureInput, inputs.String()},
		{HeaderContentDigest, digest},
	}, nil
}

// sfString serialises an RFC 8941 sf-string.
func sfString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}
