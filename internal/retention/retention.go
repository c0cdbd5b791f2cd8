// Package retention decides which finished WebhookEvents and WebhookDeliveries are
// deleted: by age, by count (per endpoint and per namespace) and by a ceiling on the
// bytes kept in etcd. It only decides; the manager reads the objects and deletes.
package retention

import (
	"cmp"
	"slices"
	"time"
)

// Unit is what is deleted together: an event with all its deliveries (so that an
// event's counts never lose a delivery), or a delivery on its own (created directly,
// or left behind by an event that is gone).
type Unit struct {
	Namespace string
	Name      string
	Event     bool
	// Finished: nothing in it is pending or retrying. Only finished units are pruned.
	Finished bool
	// Failed: some delivery in it ended Failed or Exhausted; such units are kept for
	// the failed retention and go last.
	Failed      bool
	CompletedAt time.Time
	// Bytes is the estimated etcd value size of everything in the unit.
	Bytes int64
	// Deliveries are the endpoints its deliveries went to, for the per-endpoint counts.
	Deliveries []Outcome
}

// Outcome is one finished delivery of a unit.
type Outcome struct {
	Endpoint string
	Failed   bool
}

// Limits are the finished deliveries kept per endpoint; 0 keeps any number.
type Limits struct {
	Succeeded int
	Failed    int
}

// Policy is what the manager's flags (and endpoints' overrides) ask for.
type Policy struct {
	// SucceededAge and FailedAge are how long finished units are kept; 0 keeps them.
	SucceededAge, FailedAge time.Duration
	// PerEndpoint returns an endpoint's limits; nil keeps any number.
	PerEndpoint func(namespace, endpoint string) Limits
	// EventsPerNamespace is the number of finished events kept per namespace; 0 keeps
	// any number. Over it, the oldest whose deliveries all succeeded go first.
	EventsPerNamespace int
	// MaxBytes is the ceiling on the bytes kept in etcd; 0 sets none.
	MaxBytes int64
}

// Above PruneStart of the budget, finished units are pruned, oldest succeeded first,
// until PruneTarget is reached: pruning starts well before the budget is full, so that
// fan-out is held back only when live work alone fills it.
const (
	PruneStart  = 0.75
	PruneTarget = 0.70
)

// Why a unit is pruned.
const (
	ReasonAge    = "Age"
	ReasonCount  = "Count"
	ReasonBudget = "Budget"
)

// Prune is one unit to delete, by its index in the units given to Decide.
type Prune struct {
	Unit   int
	Reason string
}

// Plan is Decide's answer.
type Plan struct {
	Prune []Prune
	// RetainedBytes is the estimate for every unit; AfterBytes once Prune is done;
	// LiveBytes for the unfinished ones (what no pruning can free).
	RetainedBytes, AfterBytes, LiveBytes int64
}

// Decide returns the units to delete: those past their age, those beyond the counts,
// then, while the bytes are above PruneStart of the budget, the oldest finished ones
// (succeeded before failed) until PruneTarget is reached. Unfinished units are never
// pruned.
func Decide(units []Unit, p Policy, now time.Time) Plan {
	var plan Plan
	pruned := make([]bool, len(units))
	prune := func(i int, reason string) {
		if !pruned[i] {
			pruned[i] = true
			plan.Prune = append(plan.Prune, Prune{Unit: i, Reason: reason})
		}
	}
	for i, u := range units {
		plan.RetainedBytes += u.Bytes
		if !u.Finished {
			plan.LiveBytes += u.Bytes
			continue
		}
		if keep := p.age(u); keep > 0 && !now.Before(u.CompletedAt.Add(keep)) {
			prune(i, ReasonAge)
		}
	}
	for _, i := range beyondEndpointLimits(units, p.PerEndpoint) {
		prune(i, ReasonCount)
	}
	for _, i := range beyondNamespaceLimit(units, p.EventsPerNamespace) {
		prune(i, ReasonCount)
	}
	plan.AfterBytes = plan.RetainedBytes
	for _, pr := range plan.Prune {
		plan.AfterBytes -= units[pr.Unit].Bytes
	}
	if p.MaxBytes > 0 && float64(plan.AfterBytes) > PruneStart*float64(p.MaxBytes) {
		target := int64(PruneTarget * float64(p.MaxBytes))
		var candidates []int
		for i, u := range units {
			if u.Finished && !pruned[i] {
				candidates = append(candidates, i)
			}
		}
		for _, i := range oldestFirst(units, candidates) {
			if plan.AfterBytes <= target {
				break
			}
			prune(i, ReasonBudget)
			plan.AfterBytes -= units[i].Bytes
		}
	}
	return plan
}

func (p Policy) age(u Unit) time.Duration {
	if u.Failed {
		return p.FailedAge
	}
	return p.SucceededAge
}

// beyondEndpointLimits returns the finished units holding an endpoint's deliveries
// beyond its newest Limits.Succeeded succeeded and Limits.Failed failed ones.
func beyondEndpointLimits(units []Unit, limits func(ns, endpoint string) Limits) []int {
	if limits == nil {
		return nil
	}
	type key struct {
		ns, endpoint string
		failed       bool
	}
	byEndpoint := map[key][]int{}
	for i, u := range units {
		if !u.Finished {
			continue
		}
		for _, d := range u.Deliveries {
			k := key{u.Namespace, d.Endpoint, d.Failed}
			byEndpoint[k] = append(byEndpoint[k], i)
		}
	}
	var out []int
	for k, idx := range byEndpoint {
		l := limits(k.ns, k.endpoint)
		keep := l.Succeeded
		if k.failed {
			keep = l.Failed
		}
		if keep <= 0 || len(idx) <= keep {
			continue
		}
		slices.SortFunc(idx, func(a, b int) int { return -olderFirst(units[a], units[b]) })
		out = append(out, idx[keep:]...)
	}
	return out
}

// beyondNamespaceLimit returns the oldest finished events of each namespace beyond
// limit, those whose deliveries all succeeded first.
func beyondNamespaceLimit(units []Unit, limit int) []int {
	if limit <= 0 {
		return nil
	}
	byNamespace := map[string][]int{}
	for i, u := range units {
		if u.Event && u.Finished {
			byNamespace[u.Namespace] = append(byNamespace[u.Namespace], i)
		}
	}
	var out []int
	for _, idx := range byNamespace {
		if len(idx) <= limit {
			continue
		}
		out = append(out, oldestFirst(units, idx)[:len(idx)-limit]...)
	}
	return out
}

// oldestFirst sorts the unit indexes idx in place: succeeded units before failed
// ones, each oldest first.
func oldestFirst(units []Unit, idx []int) []int {
	slices.SortFunc(idx, func(a, b int) int {
		ua, ub := units[a], units[b]
		if ua.Failed != ub.Failed {
			if ua.Failed {
				return 1
			}
			return -1
		}
		return olderFirst(ua, ub)
	})
	return idx
}

// olderFirst orders by completion; completionTime has a one-second resolution, and
// names break the ties so that a plan does not depend on the cache's order.
func olderFirst(a, b Unit) int {
	return cmp.Or(a.CompletedAt.Compare(b.CompletedAt), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}
