package controllers

import (
	"k8s.io/apimachinery/pkg/runtime"
)

// queuedEvents holds the Kubernetes Events a reconcile decides on until its status
// write takes: a reconcile of a stale copy, whose write is refused, reports nothing,
// so each change is reported once.
type queuedEvents struct {
	events []queuedEvent
}

type queuedEvent struct {
	regarding, related        runtime.Object
	eventtype, reason, action string
	note                      string
	args                      []any
}

func (q *queuedEvents) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	q.events = append(q.events, queuedEvent{regarding, related, eventtype, reason, action, note, args})
}

// emit sends what was queued to the real recorder.
func (q *queuedEvents) emit(to eventRecorder) {
	if to == nil {
		return
	}
	for _, e := range q.events {
		to.Eventf(e.regarding, e.related, e.eventtype, e.reason, e.action, e.note, e.args...)
	}
	q.events = nil
}
