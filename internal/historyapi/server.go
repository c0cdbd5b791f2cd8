// Package historyapi serves the delivery archive read-only over HTTP, to callers the
// cluster itself vouches for: the bearer token is checked with a TokenReview and the
// namespace asked for with a SubjectAccessReview for "list webhookdeliveries", as the
// API server would check a kubectl get.
package historyapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/callerauth"
	"github.com/hookline/hookline/internal/httpsserve"
)

// Reader is the archive's read side.
type Reader interface {
	List(ctx context.Context, f archive.Filter) ([]archive.Delivery, error)
}

// User is who a token belongs to.
type User = callerauth.User

// Auth answers who a token is, and whether that user may do an action (with the
// reason when not).
type Auth interface {
	Authenticate(ctx context.Context, token string) (User, bool, error)
	Allowed(ctx context.Context, u User, act callerauth.Action) (bool, string, error)
}

// Retrier starts a Failed or Exhausted delivery again (the PostgreSQL store).
type Retrier interface {
	Retry(ctx context.Context, namespace, name string) (found, retried bool, err error)
}

// TokenHeader carries the caller's token when Authorization cannot (through the
// API server's service proxy).
const TokenHeader = callerauth.TokenHeader

// Page is one page of a listing, newest first.
type Page struct {
	Items []archive.Delivery `json:"items"`
	// Continue, when set, is passed back as ?continue= for the next page.
	Continue string `json:"continue,omitempty"`
}

// Handler serves GET /v1/namespaces/{namespace}/deliveries[/{name}], and, with a
// Retrier, POST /v1/namespaces/{namespace}/deliveries/{name}/retry.
type Handler struct {
	Archive Reader
	Auth    Auth
	Retrier Retrier
}

const maxLimit = 500

func (h Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ns, name, retry, ok := parsePath(r.URL.Path)
	switch {
	case !ok:
		httpsserve.Fail(w, http.StatusNotFound, "not found: the paths are /v1/namespaces/<namespace>/deliveries and /v1/namespaces/<namespace>/deliveries/<name>")
		return
	case retry && h.Retrier == nil:
		httpsserve.Fail(w, http.StatusNotFound, "retry is served here with the PostgreSQL store only; annotate the WebhookDelivery (kubectl hookline retry)")
		return
	case retry && r.Method != http.MethodPost, !retry && r.Method != http.MethodGet:
		httpsserve.Fail(w, http.StatusMethodNotAllowed, "GET a listing or a delivery; POST .../retry")
		return
	}
	token := callerauth.Token(r)
	if token == "" {
		httpsserve.Fail(w, http.StatusUnauthorized, "no bearer token: the archive answers only callers the cluster authenticates")
		return
	}
	user, ok, err := h.Auth.Authenticate(r.Context(), token)
	if err != nil {
		httpsserve.Fail(w, http.StatusServiceUnavailable, "the token could not be reviewed: "+err.Error())
		return
	}
	if !ok {
		httpsserve.Fail(w, http.StatusUnauthorized, "the token is not valid in this cluster")
		return
	}
	// Reading is listing deliveries; a retry is what annotating one would be, a patch.
	act, what := callerauth.Action{Namespace: ns, Verb: "list", Resource: "webhookdeliveries"}, "read its history"
	if retry {
		act.Verb, what = "patch", "retry its deliveries"
	}
	allowed, reason, err := h.Auth.Allowed(r.Context(), user, act)
	if err != nil {
		httpsserve.Fail(w, http.StatusServiceUnavailable, "the access could not be reviewed: "+err.Error())
		return
	}
	if !allowed {
		msg := fmt.Sprintf("%s may not %s webhookdeliveries.hookline.dev in namespace %q, so may not %s", user.Name, act.Verb, ns, what)
		if reason != "" {
			msg += ": " + reason
		}
		httpsserve.Fail(w, http.StatusForbidden, msg)
		return
	}
	if retry {
		h.retry(w, r, ns, name)
		return
	}
	f, err := filter(r, ns, name)
	if err != nil {
		httpsserve.Fail(w, http.StatusBadRequest, err.Error())
		return
	}
	items, err := h.Archive.List(r.Context(), f)
	if err != nil {
		httpsserve.Fail(w, http.StatusServiceUnavailable, "the archive is not available; try again later")
		return
	}
	page := Page{Items: items}
	if page.Items == nil {
		page.Items = []archive.Delivery{}
	}
	if name == "" && len(items) == f.Limit {
		page.Continue = items[len(items)-1].FinishedAt.UTC().Format(time.RFC3339Nano)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(page)
}

// parsePath splits /v1/namespaces/{ns}/deliveries[/{name}[/retry]].
func parsePath(p string) (ns, name string, retry, ok bool) {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	if len(parts) < 4 || len(parts) > 6 || parts[0] != "v1" || parts[1] != "namespaces" || parts[3] != "deliveries" || parts[2] == "" {
		return "", "", false, false
	}
	if len(parts) >= 5 {
		name = parts[4]
	}
	if len(parts) == 6 {
		if parts[5] != "retry" {
			return "", "", false, false
		}
		retry = true
	}
	return parts[2], name, retry, true
}

// RetryResult is the answer to a retry.
type RetryResult struct {
	Name    string `json:"name"`
	Retried bool   `json:"retried"`
	// Message says why not, when not.
	Message string `json:"message,omitempty"`
}

func (h Handler) retry(w http.ResponseWriter, r *http.Request, ns, name string) {
	found, retried, err := h.Retrier.Retry(r.Context(), ns, name)
	switch {
	case err != nil:
		w.Header().Set("Retry-After", "5")
		httpsserve.Fail(w, http.StatusServiceUnavailable, "the delivery store is not available; try again later")
		return
	case !found:
		httpsserve.Fail(w, http.StatusNotFound, fmt.Sprintf("delivery %q is not in namespace %s", name, ns))
		return
	}
	res := RetryResult{Name: name, Retried: retried}
	if !retried {
		res.Message = "not Failed or Exhausted: nothing to retry"
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}

// filter reads the query: endpoint, eventType, phase, messageId, since (a duration
// like 7d or 36h, or an RFC 3339 time), limit, continue.
func filter(r *http.Request, ns, name string) (archive.Filter, error) {
	q := r.URL.Query()
	f := archive.Filter{Namespace: ns, Name: name, Endpoint: q.Get("endpoint"), EventType: q.Get("eventType"),
		Phase: q.Get("phase"), MessageID: q.Get("messageId"), Limit: 100}
	if s := q.Get("since"); s != "" {
		since, err := ParseSince(s, time.Now())
		if err != nil {
			return f, err
		}
		f.Since = since
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxLimit {
			return f, fmt.Errorf("limit %q: want 1 to %d", s, maxLimit)
		}
		f.Limit = n
	}
	if s := q.Get("continue"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return f, errors.New("continue: pass back the value of the previous page")
		}
		f.Before = t
	}
	return f, nil
}

// ParseSince reads "7d", "36h", "90m" as that long before now, or an RFC 3339 time.
func ParseSince(s string, now time.Time) (time.Time, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 {
			return now.Add(-time.Duration(n) * 24 * time.Hour), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("since %q: want a duration like 7d or 36h, or an RFC 3339 time", s)
}
