// Package admission serves hookline's validating admission webhook: the payload
// limits OpenAPI and CEL cannot express (nesting depth; size as compact JSON) are
// enforced when a WebhookEvent or a WebhookDelivery is created, so a hostile object
// never reaches etcd; and while hookline's etcd budget is full, a create is refused
// with 429 Too Many Requests, which clients retry. It is a plain net/http handler.
package admission

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hookline/hookline/internal/jsondepth"
	"github.com/hookline/hookline/internal/payload"
)

// PayloadPath is where the payload webhook is served.
const PayloadPath = "/validate-hookline-dev-v1alpha1-payload"

// maxReviewBytes bounds what is read of a review: the API server refuses objects
// larger than 3 MiB, and a review holds the object once on CREATE.
const maxReviewBytes = 4 << 20

// reviewDepth caps what is decoded of a review, so that the decoder never gives up on
// a hostile payload before it can be refused. It sits well above payload.MaxDepth
// plus the review's own levels (review, request, object, spec).
const reviewDepth = payload.MaxDepth + 32

// The webhook's registration, generated into config/webhook by controller-gen.
// failurePolicy Fail: a payload deep enough can make every LIST of the kind fail, or
// the API server unable to read the object back, so nothing is let through unchecked;
// while no manager replica serves the webhook, creating WebhookEvents and
// WebhookDeliveries is refused (producers retry), and everything else goes on.
// +kubebuilder:webhook:path=/validate-hookline-dev-v1alpha1-payload,mutating=false,failurePolicy=fail,sideEffects=None,groups=hookline.dev,resources=webhookevents;webhookdeliveries,verbs=create,versions=v1alpha1,name=payload.hookline.dev,admissionReviewVersions=v1,timeoutSeconds=5,matchPolicy=Equivalent

// PayloadHandler answers AdmissionReviews of WebhookEvent and WebhookDelivery
// creations: a payload beyond the limits is refused with a message that names them.
type PayloadHandler struct {
	// Budget, when set, decides whether hookline's etcd budget has room for the object.
	Budget Budget
	// Log, when set, is told about every refusal (never the payload).
	Log func(msg string, keysAndValues ...any)
}

// Budget decides whether hookline's etcd budget has room for a new object of the kind
// (its name: generateName leaves it empty) with a payload of payloadBytes; refused,
// why says who holds the budget.
type Budget interface {
	AdmitCreate(kind, namespace, name string, payloadBytes int) (admitted bool, why string)
}

// BudgetRetryAfter is the wait a refused producer is told: about one count of the
// budget (the pruner walks every 2 s).
const BudgetRetryAfter = 2 * time.Second

func (h PayloadHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an admission.k8s.io/v1 AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	var review admissionv1.AdmissionReview
	body := jsondepth.Capped(io.LimitReader(r.Body, maxReviewBytes), reviewDepth)
	if err := json.NewDecoder(body).Decode(&review); err != nil || review.Request == nil {
		http.Error(w, "the body is not an AdmissionReview", http.StatusBadRequest)
		return
	}
	resp := h.review(review.Request)
	resp.UID = review.Request.UID
	review.Request, review.Response = nil, resp
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(review)
}

func (h PayloadHandler) review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	if req.Operation != admissionv1.Create {
		return &admissionv1.AdmissionResponse{Allowed: true}
	}
	var obj struct {
		Spec struct {
			Payload json.RawMessage `json:"payload"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(req.Object.Raw, &obj); err != nil {
		return deny(fmt.Sprintf("%s %s/%s: cannot read the object: %v", req.Kind.Kind, req.Namespace, req.Name, err))
	}
	if obj.Spec.Payload == nil && req.Kind.Kind == "WebhookDelivery" {
		return &admissionv1.AdmissionResponse{Allowed: true} // eventRef: the event was checked
	}
	if err := payload.Check(obj.Spec.Payload); err != nil {
		if h.Log != nil {
			h.Log("refused at admission", "kind", req.Kind.Kind, "namespace", req.Namespace, "name", req.Name, "user", req.UserInfo.Username, "problem", err.Error())
		}
		return deny(fmt.Sprintf("%s %s: %v", req.Kind.Kind, req.Name, err))
	}
	if h.Budget != nil && (req.DryRun == nil || !*req.DryRun) {
		if ok, why := h.Budget.AdmitCreate(req.Kind.Kind, req.Namespace, req.Name, len(obj.Spec.Payload)); !ok {
			if h.Log != nil {
				h.Log("refused at admission: the etcd budget is full", "kind", req.Kind.Kind, "namespace", req.Namespace, "name", req.Name)
			}
			return tooManyRequests(fmt.Sprintf("%s %s: the etcd budget is full, retry later: %s", req.Kind.Kind, req.Name, why))
		}
	}
	return &admissionv1.AdmissionResponse{Allowed: true}
}

// tooManyRequests refuses with 429 and a Retry-After, which the API server passes on
// and client-go's clients retry by themselves.
func tooManyRequests(msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusTooManyRequests, Reason: metav1.StatusReasonTooManyRequests, Message: msg,
		Details: &metav1.StatusDetails{RetryAfterSeconds: int32(BudgetRetryAfter / time.Second)},
	}}
}

func deny(msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusUnprocessableEntity, Reason: metav1.StatusReasonInvalid, Message: msg,
	}}
}
