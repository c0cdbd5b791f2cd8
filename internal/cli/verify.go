package cli

import (
	"bufio"
	"crypto/ed25519"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hookline/hookline/internal/signing"
)

type verifyOptions struct {
	secrets, publicKeys []string
	scheme, headerName  string
	targetURI           string
	tolerance           time.Duration
}

func (a *app) verifyCommand() *cobra.Command {
	o := &verifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify --secret whsec_... < captured-request",
		Short: "Verify a captured HTTP request offline, the way a receiver would",
		Long: "Reads one HTTP/1.1 request (request line, headers, blank line, body) on stdin and\n" +
			"checks its signature. Exits 0 when it verifies, 1 with the precise reason when not.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.verify(o) },
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.secrets, "secret", nil, "a signing secret, whsec_… or whsk_… (repeatable)")
	f.StringArrayVar(&o.publicKeys, "public-key", nil, "an Ed25519 public key, whpk_… (repeatable)")
	f.StringVar(&o.scheme, "scheme", "StandardWebhooks", "StandardWebhooks, HMACTimestamp or HTTPMessageSignatures")
	f.StringVar(&o.headerName, "header-name", signing.DefaultHMACHeader, "the HMACTimestamp signature header")
	f.StringVar(&o.targetURI, "url", "", "HTTPMessageSignatures: the URL the request was sent to (default https://<Host><path>)")
	f.DurationVar(&o.tolerance, "tolerance", signing.DefaultTolerance, "how far the request's timestamp may be from now")
	return cmd
}

func (a *app) verify(o *verifyOptions) error {
	v := signing.Verifier{Tolerance: o.tolerance}
	for _, s := range o.secrets {
		k, err := signing.ParseSecret(s)
		if err != nil {
			return fmt.Errorf("--secret: %v", err)
		}
		v.Keys = append(v.Keys, k)
	}
	for _, p := range o.publicKeys {
		pub, err := signing.ParsePublicKey(p)
		if err != nil {
			return fmt.Errorf("--public-key: %v", err)
		}
		v.PublicKeys = append(v.PublicKeys, ed25519.PublicKey(pub))
	}
	if len(v.Keys) == 0 && len(v.PublicKeys) == 0 {
		return fmt.Errorf("--secret or --public-key is required")
	}
	req, err := http.ReadRequest(bufio.NewReader(a.in))
	if err != nil {
		return fmt.Errorf("stdin is not an HTTP request: %v", err)
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return fmt.Errorf("read the request body: %v", err)
	}
	switch o.scheme {
	case "StandardWebhooks":
		err = v.StandardWebhooks(req.Header.Get(signing.HeaderWebhookID), req.Header.Get(signing.HeaderWebhookTimestamp),
			req.Header.Get(signing.HeaderWebhookSignature), body)
	case "HMACTimestamp":
		header := req.Header.Get(o.headerName)
		if header == "" {
			return fmt.Errorf("invalid: no %s header", o.headerName)
		}
		err = v.HMACTimestamp(header, body)
	case "HTTPMessageSignatures":
		target := o.targetURI
		if target == "" {
			target = "https://" + req.Host + req.URL.RequestURI()
		}
		err = v.HTTPMessage(signing.HTTPRequest{Method: req.Method, TargetURI: target, Header: req.Header, Body: body})
	default:
		return fmt.Errorf("--scheme %q: StandardWebhooks, HMACTimestamp or HTTPMessageSignatures", o.scheme)
	}
	if err != nil {
		return fmt.Errorf("invalid: %v", err)
	}
	fmt.Fprintf(a.out, "valid: %s signature verified (webhook-id %s)\n", o.scheme, strings.TrimSpace(req.Header.Get(signing.HeaderWebhookID)))
	return nil
}
