package main

import (
	"context"

	"github.com/hookline/hookline/internal/testenv"
)

// footprintResult is what one message costs etcd.
type footprintResult struct {
	Messages            int     `json:"messages"`
	ValueBytesPerMsg    float64 `json:"valueBytesPerMessage"`
	DeliveryValueBytes  float64 `json:"deliveryValueBytes"`
	EventValueBytes     float64 `json:"eventValueBytes"`
	InUseGrowthPerMsg   float64 `json:"dbInUseGrowthPerMessageBeforeCompaction"`
	CompactedPerMsg     float64 `json:"dbInUsePerMessageAfterCompaction"`
	HoursToFill2GiB     float64 `json:"hoursToFill2GiBAtTheMaxRate"`
	MaxRatePerSec       float64 `json:"maxRatePerSec"`
	RetentionSucceededH float64 `json:"retentionSucceededHours"`
	// The bound with the default budget: its values as compacted database bytes, plus
	// the revisions written at the maximum rate between two compactions.
	BoundObjectsMiB   float64 `json:"boundObjectsMiB"`
	BoundRevisionsMiB float64 `json:"boundRevisionsMiB"`
	BoundMiB          float64 `json:"boundMiB"`
}

// defaultBudget is the manager's default --max-etcd-bytes.
const defaultBudget = 64 << 20

// compactionInterval is the API server's default --etcd-compaction-interval.
const compactionInterval = 5 * 60

// measureFootprint reads what the messages of a finished 1-endpoint scenario cost etcd:
// their values, the database's growth before compaction, and after it.
func measureFootprint(ctx context.Context, e testenv.Etcd, ns string, messages int, inUseBefore, rate float64, out *footprintResult) error {
	out.Messages, out.MaxRatePerSec, out.RetentionSucceededH = messages, rate, 24
	deliveryBytes, eventBytes, err := e.NamespaceValueBytes(ctx, ns)
	if err != nil {
		return err
	}
	out.DeliveryValueBytes = float64(deliveryBytes) / float64(messages)
	out.EventValueBytes = float64(eventBytes) / float64(messages)
	out.ValueBytesPerMsg = out.DeliveryValueBytes + out.EventValueBytes
	inUse, _, err := e.DBSize(ctx)
	if err != nil {
		return err
	}
	out.InUseGrowthPerMsg = (inUse - inUseBefore) / float64(messages)
	if err := e.Compact(ctx); err != nil {
		return err
	}
	compacted, _, err := e.DBSize(ctx)
	if err != nil {
		return err
	}
	out.CompactedPerMsg = (compacted - inUseBefore) / float64(messages)
	// The API server compacts every 5 minutes, so the compacted size is what piles up;
	// with 24h retention and nothing else bounding it, the quota is reached after:
	if out.CompactedPerMsg > 0 && rate > 0 {
		out.HoursToFill2GiB = float64(2<<30) / (out.CompactedPerMsg * rate) / 3600
	}
	out.BoundObjectsMiB = defaultBudget * out.CompactedPerMsg / out.ValueBytesPerMsg / (1 << 20)
	out.BoundRevisionsMiB = rate * compactionInterval * out.InUseGrowthPerMsg / (1 << 20)
	out.BoundMiB = out.BoundObjectsMiB + out.BoundRevisionsMiB
	return nil
}
