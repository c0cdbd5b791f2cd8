package cli

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"

	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/historyapi"
)

// historyQuery is what `history` asks the archive.
type historyQuery struct {
	endpoint, eventType, phase, since, messageID, cont string
	limit                                              int
	// url reaches the history API directly (a port-forward, tests); without it the
	// API server's service proxy reaches service.
	url, service string
	insecure     bool
}

func (a *app) historyCommand() *cobra.Command {
	var q historyQuery
	cmd := &cobra.Command{
		Use:   "history",
		Short: "Finished deliveries from the archive, newest first (needs the archive)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.checkOutput(true); err != nil {
				return err
			}
			params := url.Values{}
			for k, v := range map[string]string{"endpoint": q.endpoint, "eventType": q.eventType, "phase": q.phase,
				"since": q.since, "messageId": q.messageID, "continue": q.cont} {
				if v != "" {
					params.Set(k, v)
				}
			}
			params.Set("limit", fmt.Sprint(q.limit))
			page, err := a.fetchHistory(q, "/v1/namespaces/"+a.ns+"/deliveries", params)
			if err != nil {
				return err
			}
			return a.printHistory(page, false)
		},
	}
	show := &cobra.Command{
		Use:   "show DELIVERY",
		Short: "One archived delivery with every attempt",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.checkOutput(false); err != nil {
				return err
			}
			page, err := a.fetchHistory(q, "/v1/namespaces/"+a.ns+"/deliveries/"+url.PathEscape(args[0]), nil)
			if err != nil {
				return err
			}
			if len(page.Items) == 0 {
				return fmt.Errorf("delivery %q is not in the archive of namespace %s", args[0], a.ns)
			}
			return a.printHistory(page, true)
		},
	}
	for _, c := range []*cobra.Command{cmd, show} {
		q.flags(c)
		c.Flags().StringVarP(&a.output, "output", "o", "", "json, yaml or wide")
	}
	f := cmd.Flags()
	f.StringVar(&q.endpoint, "endpoint", "", "only deliveries to this endpoint")
	f.StringVar(&q.eventType, "event-type", "", "only deliveries of this event type")
	f.StringVar(&q.phase, "phase", "", "only Succeeded, Failed or Exhausted")
	f.StringVar(&q.since, "since", "", "only deliveries finished within this, like 7d or 36h")
	f.StringVar(&q.messageID, "message-id", "", "only deliveries of this message (webhook-id)")
	f.IntVar(&q.limit, "limit", 50, "deliveries per page (at most 500)")
	f.StringVar(&q.cont, "continue", "", "the next page: the value the previous page printed")
	cmd.AddCommand(show)
	return cmd
}

// flags are how a command reaches the history API.
func (q *historyQuery) flags(c *cobra.Command) {
	c.Flags().StringVar(&q.url, "history-url", "", "the history API's URL (a port-forward); default: through the API server's service proxy")
	c.Flags().StringVar(&q.service, "history-service", "hookline-system/hookline-history:8444", "the history API's Service, namespace/name:port")
	c.Flags().BoolVar(&q.insecure, "history-insecure-skip-tls-verify", false, "with --history-url: do not verify its certificate (the manager makes its own)")
}

func (a *app) checkOutput(wide bool) error {
	switch a.output {
	case "", "json", "yaml":
		return nil
	case "wide":
		if wide {
			return nil
		}
	}
	return fmt.Errorf("--output %q: json or yaml (or wide for a list)", a.output)
}

// fetchHistory asks the history API with the user's own token: the manager has the
// cluster review it, and the namespace asked for.
func (a *app) fetchHistory(q historyQuery, path string, params url.Values) (*historyapi.Page, error) {
	body, err := a.historyRequest(q, http.MethodGet, path, params)
	if err != nil {
		return nil, err
	}
	var page historyapi.Page
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, fmt.Errorf("history API: %w", err)
	}
	return &page, nil
}

// historyRequest sends one request to the history API with the user's token, through
// the API server's service proxy or --history-url, and returns the answer's body.
func (a *app) historyRequest(q historyQuery, method, path string, params url.Values) ([]byte, error) {
	cfg, err := a.kube.ClientConfig()
	if err != nil {
		return nil, err
	}
	token, err := bearerToken(cfg, "history")
	if err != nil {
		return nil, err
	}
	var target string
	var hc *http.Client
	if q.url != "" {
		target = strings.TrimSuffix(q.url, "/") + path
		hc = &http.Client{Timeout: a.timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: q.insecure}}}
	} else {
		svcNS, rest0, ok := strings.Cut(q.service, "/")
		name, port, ok2 := strings.Cut(rest0, ":")
		if !ok || !ok2 {
			return nil, fmt.Errorf("--history-service %q: want namespace/name:port", q.service)
		}
		target = fmt.Sprintf("%s/api/v1/namespaces/%s/services/https:%s:%s/proxy%s", strings.TrimSuffix(cfg.Host, "/"), svcNS, name, port, path)
		if hc, err = rest.HTTPClientFor(cfg); err != nil {
			return nil, err
		}
		hc.Timeout = a.timeout
	}
	if len(params) > 0 {
		target += "?" + params.Encode()
	}
	req, err := http.NewRequest(method, target, nil)
	if err != nil {
		return nil, err
	}
	// The API server's proxy consumes Authorization (it authenticates the user to the
	// proxy itself), so the token for the manager travels in a header of its own.
	req.Header.Set(historyapi.TokenHeader, "Bearer "+token)
	if q.url != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("history API: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode != http.StatusOK {
		var refusal struct{ Message string }
		if json.Unmarshal(body, &refusal) == nil && refusal.Message != "" {
			return nil, fmt.Errorf("history API (%d): %s", resp.StatusCode, refusal.Message)
		}
		return nil, fmt.Errorf("history API: %s", resp.Status)
	}
	return body, nil
}

func (a *app) printHistory(page *historyapi.Page, attempts bool) error {
	if a.output == "json" || a.output == "yaml" {
		return a.emit(page)
	}
	if len(page.Items) == 0 {
		fmt.Fprintf(a.err, "No archived deliveries found in %s namespace.\n", a.ns)
		return nil
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 3, ' ', 0)
	header := "NAME\tENDPOINT\tTYPE\tPHASE\tATTEMPTS\tCODE\tFINISHED"
	if a.output == "wide" || attempts {
		header += "\tMESSAGE ID\tSCHEME"
	}
	fmt.Fprintln(tw, header)
	for _, d := range page.Items {
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%d\t%s", d.Name, d.Endpoint, d.EventType, d.Phase, d.Attempts, lastCode(d),
			d.FinishedAt.Local().Format(time.RFC3339))
		if a.output == "wide" || attempts {
			line += "\t" + d.MessageID + "\t" + d.SignatureScheme
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if attempts {
		d := page.Items[0]
		fmt.Fprintln(a.out, "\nATTEMPTS")
		tw := tabwriter.NewWriter(a.out, 0, 4, 3, ' ', 0)
		fmt.Fprintln(tw, "#\tTIME\tDURATION\tCODE\tERROR\tRESPONSE")
		for i, h := range d.History {
			fmt.Fprintf(tw, "%d\t%s\t%dms\t%d\t%s\t%s\n", i+1, h.Time.Local().Format(time.RFC3339), h.DurationMs, h.StatusCode, h.Error,
				strings.Join(strings.Fields(h.Response), " "))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(d.Payload) > 0 && string(d.Payload) != "null" {
			fmt.Fprintf(a.out, "\nPAYLOAD\n%s\n", d.Payload)
		}
	}
	if page.Continue != "" {
		fmt.Fprintf(a.err, "More: --continue %s\n", page.Continue)
	}
	return nil
}

func lastCode(d archive.Delivery) int32 {
	if len(d.History) == 0 {
		return 0
	}
	return d.History[len(d.History)-1].StatusCode
}

// bearerToken is the kubeconfig's token, which the manager's own APIs (history,
// publish) have the cluster review; a client certificate cannot be passed on.
func bearerToken(cfg *rest.Config, what string) (string, error) {
	token := cfg.BearerToken
	if token == "" && cfg.BearerTokenFile != "" {
		raw, err := os.ReadFile(cfg.BearerTokenFile)
		if err != nil {
			return "", err
		}
		token = strings.TrimSpace(string(raw))
	}
	if token == "" {
		return "", fmt.Errorf("%s needs a bearer token in the kubeconfig (the manager has the cluster review it; a client certificate cannot be passed on), e.g. one from kubectl create token", what)
	}
	return token, nil
}
