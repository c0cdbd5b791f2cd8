package historyapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"github.com/hookline/hookline/internal/callerauth"
	"github.com/hookline/hookline/internal/httpsserve"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/hookline/hookline/internal/archive"
	"github.com/hookline/hookline/internal/testenv"
)

var (
	env       *testenv.Env
	clientset *kubernetes.Clientset
	store     *archive.Store
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	var err error
	env, err = testenv.Start()
	if err != nil {
		return testenv.Without(m, err)
	}
	defer func() { _ = env.Stop() }()
	pg, err := testenv.StartPostgres()
	if err != nil {
		return testenv.Without(m, err)
	}
	defer func() { _ = pg.Remove() }()
	if clientset, err = kubernetes.NewForConfig(env.Config); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if store, err = archive.Open(context.Background(), pg.DSN); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer store.Close()
	return m.Run()
}

// listDeliveries is the permission the history asks for.
var listDeliveries = rbacv1.PolicyRule{APIGroups: []string{"hookline.dev"}, Resources: []string{"webhookdeliveries"}, Verbs: []string{"get", "list"}}

func token(t *testing.T, ns, name string, rules ...rbacv1.PolicyRule) string {
	t.Helper()
	tok, err := env.ServiceAccountToken(context.Background(), ns, name, rules...)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func archived(ns string, i int, finished time.Time) archive.Delivery {
	return archive.Delivery{UID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i), FinishedAt: finished, Namespace: ns,
		Name: fmt.Sprintf("order-%d-acme", i), Endpoint: "acme", EventType: "order.created", MessageID: fmt.Sprintf("msg_%d", i),
		Phase: "Succeeded", Attempts: 1, SignatureScheme: "StandardWebhooks", CreatedAt: finished.Add(-time.Second),
		History: []archive.Attempt{{Time: finished, StatusCode: 200, Response: "ok"}}, Payload: []byte(`{"order":1}`)}
}

func get(t *testing.T, url, header, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set(header, "Bearer "+token)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// The cluster decides who reads what: a token of a user who may list deliveries in
// a namespace reads that namespace's history, and only it; anyone else is refused.
func TestHistoryIsAuthorisedByTheCluster(t *testing.T) {
	testenv.Needs(t)
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	if _, err := store.Write(ctx, []archive.Delivery{archived("shop", 1, now.Add(-time.Minute)), archived("shop", 2, now), archived("bank", 3, now)}, nil); err != nil {
		t.Fatal(err)
	}
	reader := token(t, "shop", "support", listDeliveries)
	stranger := token(t, "shop", "stranger")
	listening := make(chan string, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &httpsserve.Server{Addr: "127.0.0.1:0", Handler: Handler{Archive: store, Auth: KubeAuth{KubeAuth: callerauth.KubeAuth{Client: clientset}}}, Listening: listening}
	go func() { _ = srv.Start(ctx) }()
	base := "https://" + <-listening

	code, body := get(t, base+"/v1/namespaces/shop/deliveries", "Authorization", reader)
	var page Page
	if err := json.Unmarshal(body, &page); code != http.StatusOK || err != nil {
		t.Fatalf("reader: %d %s", code, body)
	}
	if len(page.Items) != 2 || page.Items[0].Name != "order-2-acme" || page.Items[1].Name != "order-1-acme" {
		t.Fatalf("reader got %+v, want shop's two deliveries, newest first", page.Items)
	}
	// Through the API server's service proxy the token comes in its own header.
	code, body = get(t, base+"/v1/namespaces/shop/deliveries/order-1-acme", TokenHeader, reader)
	if err := json.Unmarshal(body, &page); code != http.StatusOK || err != nil || len(page.Items) != 1 || page.Items[0].History[0].Response != "ok" {
		t.Fatalf("show: %d %s", code, body)
	}
	code, body = get(t, base+"/v1/namespaces/shop/deliveries?limit=1", "Authorization", reader)
	if err := json.Unmarshal(body, &page); code != http.StatusOK || err != nil || len(page.Items) != 1 || page.Continue == "" {
		t.Fatalf("first page: %d %s", code, body)
	}
	code, body = get(t, base+"/v1/namespaces/shop/deliveries?limit=1&continue="+page.Continue, "Authorization", reader)
	if err := json.Unmarshal(body, &page); code != http.StatusOK || err != nil || len(page.Items) != 1 || page.Items[0].Name != "order-1-acme" {
		t.Fatalf("second page: %d %s", code, body)
	}

	for _, c := range []struct {
		what, path, token string
		code              int
		says              string
	}{
		{"another namespace", "/v1/namespaces/bank/deliveries", reader, http.StatusForbidden, `may not list webhookdeliveries.hookline.dev in namespace "bank"`},
		{"no permission", "/v1/namespaces/shop/deliveries", stranger, http.StatusForbidden, "system:serviceaccount:shop:stranger may not list"},
		{"no token", "/v1/namespaces/shop/deliveries", "", http.StatusUnauthorized, "no bearer token"},
		{"a token the cluster does not know", "/v1/namespaces/shop/deliveries", "not-a-token", http.StatusUnauthorized, "not valid"},
		{"a bad query", "/v1/namespaces/shop/deliveries?since=yesterday", reader, http.StatusBadRequest, "since"},
	} {
		code, body := get(t, base+c.path, "Authorization", c.token)
		var refusal struct{ Message string }
		_ = json.Unmarshal(body, &refusal)
		if code != c.code || !strings.Contains(refusal.Message, c.says) {
			t.Errorf("%s: %d %s; want %d saying %q", c.what, code, body, c.code, c.says)
		}
		if strings.Contains(string(body), "order-3") {
			t.Errorf("%s: another namespace's delivery leaked: %s", c.what, body)
		}
	}
}
