package cli

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hooklinev1 "github.com/hookline/hookline/api/v1alpha1"
	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/historyapi"
)

var phases = []string{"Pending", "Retrying", "Succeeded", "Failed", "Exhausted"}

type deliveryFilter struct {
	endpoint, phase string
	since           time.Duration
}

func (f *deliveryFilter) flags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.endpoint, "endpoint", "", "only deliveries to this endpoint")
	cmd.Flags().StringVar(&f.phase, "phase", "", "only deliveries in this phase: "+strings.Join(phases, ", "))
}

// list selects deliveries server-side (the CRD's selectable fields) and by age here.
func (a *app) listDeliveries(f deliveryFilter) ([]hooklinev1.WebhookDelivery, error) {
	if f.phase != "" && !contains(phases, f.phase) {
		return nil, fmt.Errorf("--phase %q: one of %s", f.phase, strings.Join(phases, ", "))
	}
	var sel []fields.Selector
	if f.endpoint != "" {
		sel = append(sel, fields.OneTermEqualSelector("spec.endpointRef.name", f.endpoint))
	}
	if f.phase != "" {
		sel = append(sel, fields.OneTermEqualSelector("status.phase", f.phase))
	}
	ctx, cancel := a.context()
	defer cancel()
	var list hooklinev1.WebhookDeliveryList
	opts := []client.ListOption{client.InNamespace(a.ns)}
	if len(sel) > 0 {
		opts = append(opts, client.MatchingFieldsSelector{Selector: fields.AndSelectors(sel...)})
	}
	if err := a.client.List(ctx, &list, opts...); err != nil {
		return nil, fmt.Errorf("list deliveries: %s", oneLine(err))
	}
	var out []hooklinev1.WebhookDelivery
	for _, d := range list.Items {
		if f.since > 0 && time.Since(d.CreationTimestamp.Time) > f.since {
			continue
		}
		out = append(out, d)
	}
	return out, nil
}

// listQueued lists the PostgreSQL store's deliveries through the history API, page by
// page, as WebhookDeliveries, so that both stores print the same way.
func (a *app) listQueued(q historyQuery, f deliveryFilter) ([]hooklinev1.WebhookDelivery, error) {
	if f.phase != "" && !contains(phases, f.phase) {
		return nil, fmt.Errorf("--phase %q: one of %s", f.phase, strings.Join(phases, ", "))
	}
	params := url.Values{"limit": {"500"}}
	for k, v := range map[string]string{"endpoint": f.endpoint, "phase": f.phase} {
		if v != "" {
			params.Set(k, v)
		}
	}
	if f.since > 0 {
		params.Set("since", time.Now().Add(-f.since).UTC().Format(time.RFC3339))
	}
	var out []hooklinev1.WebhookDelivery
	for {
		page, err := a.fetchHistory(q, "/v1/namespaces/"+a.ns+"/deliveries", params)
		if err != nil {
			return nil, err
		}
		for _, d := range page.Items {
			out = append(out, asWebhookDelivery(d))
		}
		if page.Continue == "" {
			return out, nil
		}
		params.Set("continue", page.Continue)
	}
}

// asWebhookDelivery is a queued delivery as the WebhookDelivery it would be in the etcd
// store.
func asWebhookDelivery(d archive.Delivery) hooklinev1.WebhookDelivery {
	w := hooklinev1.WebhookDelivery{
		TypeMeta:   metav1.TypeMeta{APIVersion: hooklinev1.GroupVersion.String(), Kind: "WebhookDelivery"},
		ObjectMeta: metav1.ObjectMeta{Namespace: d.Namespace, Name: d.Name, CreationTimestamp: metav1.NewTime(d.CreatedAt)},
		Spec:       hooklinev1.WebhookDeliverySpec{EndpointRef: hooklinev1.LocalRef{Name: d.Endpoint}, EventType: d.EventType},
		Status: hooklinev1.WebhookDeliveryStatus{Phase: hooklinev1.DeliveryPhase(d.Phase), MessageID: d.MessageID,
			Attempts: d.Attempts, ResponseStatusCode: lastCode(d)},
	}
	if d.EventName != "" {
		w.Spec.EventRef = &hooklinev1.LocalRef{Name: d.EventName}
	}
	for _, h := range d.History {
		w.Status.History = append(w.Status.History, hooklinev1.AttemptRecord{Time: metav1.NewMicroTime(h.Time), DurationMs: h.DurationMs,
			StatusCode: h.StatusCode, Error: h.Error, Response: h.Response})
	}
	if n := len(d.History); n > 0 {
		last := metav1.NewMicroTime(d.History[n-1].Time)
		w.Status.LastAttemptTime = &last
	}
	if d.NextAttemptTime != nil {
		next := metav1.NewMicroTime(*d.NextAttemptTime)
		w.Status.NextAttemptTime = &next
	}
	if w.Status.Phase.Finished() {
		done := metav1.NewTime(d.FinishedAt)
		w.Status.CompletionTime = &done
	}
	return w
}

func (a *app) deliveriesCommand() *cobra.Command {
	var f deliveryFilter
	var queued bool
	var q historyQuery
	cmd := &cobra.Command{
		Use:   "deliveries",
		Short: "List deliveries, by endpoint, phase and age",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if a.output != "" && a.output != "json" && a.output != "yaml" {
				return fmt.Errorf("--output %q: json or yaml", a.output)
			}
			list := a.listDeliveries
			if queued {
				list = func(f deliveryFilter) ([]hooklinev1.WebhookDelivery, error) { return a.listQueued(q, f) }
			}
			items, err := list(f)
			if err != nil {
				return err
			}
			if a.output != "" {
				list := &hooklinev1.WebhookDeliveryList{Items: items}
				list.APIVersion, list.Kind = "v1", "List"
				return a.print(list)
			}
			if len(items) == 0 {
				fmt.Fprintf(a.err, "No deliveries found in %s namespace.\n", a.ns)
				return nil
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "NAME\tENDPOINT\tTYPE\tPHASE\tATTEMPTS\tCODE\tNEXT ATTEMPT\tAGE")
			for _, d := range items {
				next := "<none>"
				if d.Status.NextAttemptTime != nil {
					next = "in " + time.Until(d.Status.NextAttemptTime.Time).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", d.Name, d.Spec.EndpointRef.Name, d.Spec.EventType,
					d.Status.Phase, d.Status.Attempts, d.Status.ResponseStatusCode, next, time.Since(d.CreationTimestamp.Time).Round(time.Second))
			}
			return tw.Flush()
		},
	}
	f.flags(cmd)
	cmd.Flags().DurationVar(&f.since, "since", 0, "only deliveries created within this duration, like 1h")
	cmd.Flags().StringVarP(&a.output, "output", "o", "", "json or yaml")
	cmd.Flags().BoolVar(&queued, postgresFlag, false, "the deliveries are in the PostgreSQL store: list them through the manager's history API")
	q.flags(cmd)
	return cmd
}

// postgresFlag selects the PostgreSQL store, where deliveries are not objects.
const postgresFlag = "postgres"

func (a *app) retryCommand() *cobra.Command {
	var f deliveryFilter
	var queued bool
	var q historyQuery
	cmd := &cobra.Command{
		Use:   "retry DELIVERY... | --endpoint NAME --phase Exhausted",
		Short: "Retry Failed or Exhausted deliveries",
		RunE: func(cmd *cobra.Command, args []string) error {
			names := args
			if len(args) == 0 {
				if f.endpoint == "" && f.phase == "" {
					return fmt.Errorf("name deliveries, or select them with --endpoint and --phase")
				}
				list := a.listDeliveries
				if queued {
					list = func(f deliveryFilter) ([]hooklinev1.WebhookDelivery, error) { return a.listQueued(q, f) }
				}
				items, err := list(f)
				if err != nil {
					return err
				}
				for _, d := range items {
					if d.Status.Phase == hooklinev1.PhaseFailed || d.Status.Phase == hooklinev1.PhaseExhausted {
						names = append(names, d.Name)
					}
				}
				if len(names) == 0 {
					fmt.Fprintln(a.err, "no Failed or Exhausted delivery matches")
					return nil
				}
			} else if f.endpoint != "" || f.phase != "" {
				return fmt.Errorf("name deliveries or select them with --endpoint/--phase, not both")
			}
			if queued {
				return a.retryQueued(q, names)
			}
			ctx, cancel := a.context()
			defer cancel()
			token := time.Now().UTC().Format(time.RFC3339Nano)
			patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, hooklinev1.AnnotationRetry, token)
			failed := 0
			for _, name := range names {
				d := &hooklinev1.WebhookDelivery{}
				d.Name, d.Namespace = name, a.ns
				if err := a.client.Patch(ctx, d, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
					fmt.Fprintf(a.err, "error: webhookdelivery/%s: %s\n", name, oneLine(err))
					failed++
					continue
				}
				fmt.Fprintf(a.out, "webhookdelivery/%s retry requested\n", name)
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d deliveries could not be retried", failed, len(names))
			}
			return nil
		},
	}
	f.flags(cmd)
	cmd.Flags().BoolVar(&queued, postgresFlag, false, "the deliveries are in the PostgreSQL store: retry them through the manager's history API")
	q.flags(cmd)
	return cmd
}

// retryQueued retries deliveries of the PostgreSQL store by name, through the history
// API, with the user's token (allowed to patch webhookdeliveries in the namespace).
func (a *app) retryQueued(q historyQuery, names []string) error {
	failed := 0
	for _, name := range names {
		body, err := a.historyRequest(q, http.MethodPost, "/v1/namespaces/"+a.ns+"/deliveries/"+url.PathEscape(name)+"/retry", nil)
		if err != nil {
			fmt.Fprintf(a.err, "error: delivery %s: %s\n", name, err)
			failed++
			continue
		}
		var res historyapi.RetryResult
		if err := json.Unmarshal(body, &res); err != nil {
			return err
		}
		if !res.Retried {
			fmt.Fprintf(a.out, "delivery %s: %s\n", name, res.Message)
			continue
		}
		fmt.Fprintf(a.out, "delivery %s retry requested\n", name)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d deliveries could not be retried", failed, len(names))
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
