package testenv

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

// Etcd speaks to the control plane's etcd through its JSON gateway: key sizes and
// versions, the database size, compaction and defragmentation, as an operator's
// etcdctl would. Tests and the benchmark judge what hookline costs etcd with it.
type Etcd struct{ URL string }

// Etcd is a client of the control plane's etcd.
func (e *Env) Etcd() Etcd { return Etcd{URL: e.EtcdURL()} }

func (e Etcd) post(ctx context.Context, path string, body any, out any) error {
	raw, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.URL+path, bytes.NewReader(raw))
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

// ValueBytes sums the sizes of the values under a key prefix (the latest revision).
func (e Etcd) ValueBytes(ctx context.Context, prefix string) (keys int, total int, err error) {
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

// NamespaceValueBytes sums the values of a namespace's deliveries and events.
func (e Etcd) NamespaceValueBytes(ctx context.Context, ns string) (deliveries, events int, err error) {
	if _, deliveries, err = e.ValueBytes(ctx, "/registry/hookline.dev/webhookdeliveries/"+ns+"/"); err != nil {
		return 0, 0, err
	}
	_, events, err = e.ValueBytes(ctx, "/registry/hookline.dev/webhookevents/"+ns+"/")
	return deliveries, events, err
}

// DBSize is etcd's database size in use, in bytes (what the quota is measured on
// after a defragmentation; the file itself only grows until then).
func (e Etcd) DBSize(ctx context.Context) (inUse float64, total float64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.URL+"/metrics", nil)
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

// Compact compacts away every revision before the current one and defragments, as
// the API server's compaction (every 5 minutes) and an operator's defrag would.
func (e Etcd) Compact(ctx context.Context) error {
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

// KeyVersions returns the version of each key under a prefix, by the key's last path
// element: etcd counts every write of a key since its creation (1 after the create).
func (e Etcd) KeyVersions(ctx context.Context, prefix string) (map[string]int64, error) {
	end := []byte(prefix)
	end[len(end)-1]++
	var out struct {
		Kvs []struct {
			Key     string `json:"key"`
			Version string `json:"version"`
		} `json:"kvs"`
	}
	if err := e.post(ctx, "/v3/kv/range", map[string]any{
		"key":       base64.StdEncoding.EncodeToString([]byte(prefix)),
		"range_end": base64.StdEncoding.EncodeToString(end),
		"keys_only": true,
	}, &out); err != nil {
		return nil, err
	}
	versions := make(map[string]int64, len(out.Kvs))
	for _, kv := range out.Kvs {
		key, err := base64.StdEncoding.DecodeString(kv.Key)
		if err != nil {
			return nil, err
		}
		v, _ := strconv.ParseInt(kv.Version, 10, 64)
		versions[strings.TrimPrefix(string(key), prefix)] = v
	}
	return versions, nil
}
