package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// printTable prints a resource the way `kubectl get` does: the API server renders the
// CRD's printer columns as a meta.k8s.io Table.
func printTable(ctx context.Context, cfg *rest.Config, resource string) error {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return err
	}
	url := strings.TrimSuffix(cfg.Host, "/") + "/apis/hookline.dev/v1alpha1/namespaces/" + namespace + "/" + resource
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	var table metav1.Table
	if err := json.Unmarshal(raw, &table); err != nil {
		return err
	}
	fmt.Printf("\n    $ kubectl get %s -n %s\n", resource, namespace)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 3, ' ', 0)
	var head []string
	for _, col := range table.ColumnDefinitions {
		if col.Priority == 0 {
			head = append(head, strings.ToUpper(col.Name))
		}
	}
	fmt.Fprintln(tw, "    "+strings.Join(head, "\t"))
	for _, row := range table.Rows {
		var cells []string
		for i, col := range table.ColumnDefinitions {
			if col.Priority == 0 && i < len(row.Cells) {
				cells = append(cells, cellText(col.Type, row.Cells[i]))
			}
		}
		fmt.Fprintln(tw, "    "+strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// cellText renders a cell as kubectl does: dates as ages, missing values as <none>.
func cellText(typ string, v any) string {
	if v == nil || v == "" {
		return "<none>"
	}
	if s, ok := v.(string); ok && typ == "date" {
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			d := time.Since(t).Round(time.Second)
			if d < 0 {
				return "in " + (-d).String()
			}
			return d.String()
		}
	}
	return fmt.Sprint(v)
}
