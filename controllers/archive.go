package controllers

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/signing"
)

// Archiver keeps finished deliveries beyond the cluster: the pruner writes a unit
// there before it deletes it, and deletes nothing it could not write.
type Archiver interface {
	// Write returns how many of the deliveries were not in the archive yet.
	Write(ctx context.Context, deliveries []archive.Delivery, payloads []archive.Payload) (int, error)
	DropBefore(ctx context.Context, cutoff time.Time) ([]string, error)
}

// archiveBatch is the number of deliveries written to the archive at once.
const archiveBatch = 500

// archiveRecords are what the archive keeps of a unit: each delivery, and the event's
// payload once.
func archiveRecords(u unitObjects) ([]archive.Delivery, []archive.Payload) {
	var deliveries []archive.Delivery
	var payloads []archive.Payload
	if e := u.event; e != nil {
		payloads = append(payloads, archive.Payload{EventUID: string(e.UID), CreatedAt: e.CreationTimestamp.Time,
			Namespace: e.Namespace, EventName: e.Name, Payload: e.Spec.Payload.Raw})
	}
	for _, d := range u.deliveries {
		rec := archive.Delivery{
			UID: string(d.UID), Namespace: d.Namespace, Name: d.Name, Endpoint: d.Spec.EndpointRef.Name,
			EventType: d.Spec.EventType, MessageID: d.Status.MessageID, Phase: string(d.Status.Phase),
			Attempts: d.Status.Attempts, SignatureScheme: signing.SchemeOf(d.Status.Signature), CreatedAt: d.CreationTimestamp.Time,
			FinishedAt: d.CreationTimestamp.Time,
		}
		if d.Status.CompletionTime != nil {
			rec.FinishedAt = d.Status.CompletionTime.Time
		}
		if owner := metav1.GetControllerOf(d); owner != nil && d.Spec.EventRef != nil {
			rec.EventUID, rec.EventName = string(owner.UID), d.Spec.EventRef.Name
		}
		if d.Spec.Payload != nil {
			rec.Payload = d.Spec.Payload.Raw
		}
		for _, h := range d.Status.History {
			rec.History = append(rec.History, archive.Attempt{Time: h.Time.Time, DurationMs: h.DurationMs, StatusCode: h.StatusCode,
				Error: h.Error, Response: h.Response})
		}
		deliveries = append(deliveries, rec)
	}
	return deliveries, payloads
}
