package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// etcdClient speaks to the control plane's etcd through its JSON gateway: key sizes,
// the database size, compaction and defragmentation, as an operator's etcdctl would.
type etcdClient struct{ url string }

func (e etcdClient) post(ctx context.Context, path string, body any, out any) error {
	raw, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url+path, bytes.NewReader(raw))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s: %d %s", path, resp.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

// valueBytes sums the sizes of the values under a key prefix (the latest revision).
func (e etcdClient) valueBytes(ctx context.Context, prefix string) (keys int, total int, err error) {
	end := []byte(prefix)
	end[len(end)-1]++
	var out struct {
		Kvs []struct {
			Value string `json:"value"`
		} `json:"kvs"`
	}
	err = e.post(ctx, "/v3/kv/range", map[string]any{
		"key":       base64.StdEncoding.EncodeToString([]byte(prefix)),
		"range_end": base64.StdEncoding.EncodeToString(end),
	}, &out)
	for _, kv := range out.Kvs {
		total += base64.StdEncoding.DecodedLen(len(kv.Value)) - strings.Count(kv.Value, "=")
	}
	return len(out.Kvs), total, err
}

// namespaceValueBytes sums the values of a namespace's deliveries and events.
func (e etcdClient) namespaceValueBytes(ctx context.Context, ns string) (deliveries, events int, err error) {
	if _, deliveries, err = e.valueBytes(ctx, "/registry/hookline.dev/webhookdeliveries/"+ns+"/"); err != nil {
		return 0, 0, err
	}
	_, events, err = e.valueBytes(ctx, "/registry/hookline.dev/webhookevents/"+ns+"/")
	return deliveries, events, err
}

// dbSize is etcd's database size in use, in bytes (what the quota is measured on
// after a defragmentation; the file itself only grows until then).
func (e etcdClient) dbSize(ctx context.Context) (inUse float64, total float64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/metrics", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "etcd_mvcc_db_total_size_in_use_in_bytes":
			inUse = v
		case "etcd_mvcc_db_total_size_in_bytes":
			total = v
		}
	}
	return inUse, total, nil
}

// compact compacts away every revision before the current one and defragments, as
// the API server's compaction (every 5 minutes) and an operator's defrag would.
func (e etcdClient) compact(ctx context.Context) error {
	var status struct {
		Header struct {
			Revision string `json:"revision"`
		} `json:"header"`
	}
	if err := e.post(ctx, "/v3/maintenance/status", map[string]any{}, &status); err != nil {
		return err
	}
	rev, _ := strconv.ParseInt(status.Header.Revision, 10, 64)
	if err := e.post(ctx, "/v3/kv/compaction", map[string]any{"revision": rev, "physical": true}, nil); err != nil && !strings.Contains(err.Error(), "compacted") {
		return err
	}
	return e.post(ctx, "/v3/maintenance/defragment", map[string]any{}, nil)
}

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
func measureFootprint(ctx context.Context, e etcdClient, ns string, messages int, inUseBefore, rate float64, out *footprintResult) error {
	out.Messages, out.MaxRatePerSec, out.RetentionSucceededH = messages, rate, 24
	deliveryBytes, eventBytes, err := e.namespaceValueBytes(ctx, ns)
	if err != nil {
		return err
	}
	out.DeliveryValueBytes = float64(deliveryBytes) / float64(messages)
	out.EventValueBytes = float64(eventBytes) / float64(messages)
	out.ValueBytesPerMsg = out.DeliveryValueBytes + out.EventValueBytes
	inUse, _, err := e.dbSize(ctx)
	if err != nil {
		return err
	}
	out.InUseGrowthPerMsg = (inUse - inUseBefore) / float64(messages)
	if err := e.compact(ctx); err != nil {
		return err
	}
	compacted, _, err := e.dbSize(ctx)
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
