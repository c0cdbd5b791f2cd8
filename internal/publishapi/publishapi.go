// Package publishapi is the publish API of the PostgreSQL delivery store: one event or
// a batch of up to 1,000 per HTTPS request, idempotent by the event's name, with the
// payload limits of admission, authorised as the cluster would authorise creating
// WebhookEvents in the namespace. Producers need a Role, not database credentials,
// and their events do not pass through the API server.
package publishapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/hookline/hookline/internal/callerauth"
	"github.com/hookline/hookline/internal/httpsserve"
	"github.com/hookline/hookline/internal/payload"
	"github.com/hookline/hookline/pkg/publish"
)

// The wire types are the client package's: one definition for both ends.
type (
	Event    = publish.Event
	Request  = publish.Request
	Response = publish.Response
)

// MaxEvents is the most events one request may carry.
const MaxEvents = publish.MaxEvents

// maxBody bounds a request's body: a batch of small events, not 1,000 at the limit.
const maxBody = 32 << 20

// ErrUnavailable wraps a Publisher's error when the store cannot take events now; the
// caller is told to retry (503).
var ErrUnavailable = errors.New("the delivery store is unavailable")

// Publisher queues a namespace's events with their fan-out.
type Publisher interface {
	Publish(ctx context.Context, namespace string, events []Event) (queued int, err error)
}

// Handler serves the publish API.
type Handler struct {
	Auth      *callerauth.Cached
	Publisher Publisher
}

// TokenHeader carries the caller's token when Authorization cannot (through the
// API server's service proxy).
const TokenHeader = callerauth.TokenHeader

var eventType = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$`)

func (h Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ns, ok := parsePath(r.URL.Path)
	if !ok {
		httpsserve.Fail(w, http.StatusNotFound, "not found: POST /v1/namespaces/{namespace}/events")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		httpsserve.Fail(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	token := callerauth.Token(r)
	if token == "" {
		httpsserve.Fail(w, http.StatusUnauthorized, "no bearer token: send a ServiceAccount token in Authorization")
		return
	}
	user, known, allowed, reason, err := h.Auth.Authorize(r.Context(), token, callerauth.Action{Namespace: ns, Verb: "create", Resource: "webhookevents"})
	switch {
	case err != nil:
		httpsserve.Fail(w, http.StatusServiceUnavailable, "cannot review the token with the API server: "+err.Error())
		return
	case !known:
		httpsserve.Fail(w, http.StatusUnauthorized, "the token is not valid")
		return
	case !allowed:
		msg := fmt.Sprintf("%s may not create webhookevents.hookline.dev in namespace %q, so may not publish there", user.Name, ns)
		if reason != "" {
			msg += ": " + reason
		}
		httpsserve.Fail(w, http.StatusForbidden, msg)
		return
	}
	var req Request
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	if err := dec.Decode(&req); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			httpsserve.Fail(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the request is larger than %d MiB: send smaller batches", maxBody>>20))
			return
		}
		httpsserve.Fail(w, http.StatusBadRequest, "the body is not a JSON object {\"events\": [...]}: "+err.Error())
		return
	}
	if n := len(req.Events); n == 0 || n > MaxEvents {
		httpsserve.Fail(w, http.StatusBadRequest, fmt.Sprintf("a request carries 1 to %d events, not %d", MaxEvents, n))
		return
	}
	for i, e := range req.Events {
		if problem := check(e); problem != "" {
			httpsserve.Fail(w, http.StatusUnprocessableEntity, fmt.Sprintf("events[%d] (%s): %s; nothing of this request was published", i, e.Name, problem))
			return
		}
	}
	queued, err := h.Publisher.Publish(r.Context(), ns, req.Events)
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			w.Header().Set("Retry-After", "5")
			httpsserve.Fail(w, http.StatusServiceUnavailable, err.Error()+"; nothing of this request was published: retry it")
			return
		}
		httpsserve.Fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(Response{Events: len(req.Events), Queued: queued})
}

// check applies the rules of a WebhookEvent: a name like an object's, a dotted type,
// a payload within admission's limits, a valid selector.
func check(e Event) string {
	if errs := validation.IsDNS1123Subdomain(e.Name); len(errs) > 0 {
		return "name " + strings.Join(errs, "; ")
	}
	if len(e.Type) == 0 || len(e.Type) > 128 || !eventType.MatchString(e.Type) {
		return "type must be lower-case and dotted like order.created, at most 128 characters"
	}
	if err := payload.Check(e.Payload); err != nil {
		return err.Error()
	}
	if e.EndpointSelector != nil {
		if _, err := metav1.LabelSelectorAsSelector(e.EndpointSelector); err != nil {
			return "endpointSelector: " + err.Error()
		}
	}
	return ""
}

// parsePath reads /v1/namespaces/{ns}/events.
func parsePath(p string) (string, bool) {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	if len(parts) != 4 || parts[0] != "v1" || parts[1] != "namespaces" || parts[3] != "events" || parts[2] == "" {
		return "", false
	}
	return parts[2], true
}
