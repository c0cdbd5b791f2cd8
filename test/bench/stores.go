package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hookline/hookline/internal/testenv"
)

// storesResult compares the two delivery stores on the same scenarios, in one run.
type storesResult struct {
	Kubernetes []scenarioResult `json:"kubernetes"`
	Postgres   []scenarioResult `json:"postgres"`
	// What the queue takes in PostgreSQL per delivery (tables and indexes, the
	// payload stored once per event) and the WAL written per delivery.
	PostgresBytesPerDelivery float64 `json:"postgresBytesPerDelivery"`
	PostgresWALPerDelivery   float64 `json:"postgresWALBytesPerDelivery"`
	// CPU per delivery over the PostgreSQL store's scenarios: PostgreSQL's processes and
	// the manager's, in milliseconds.
	PostgresCPUMsPerDelivery float64 `json:"postgresCPUMsPerDelivery"`
	ManagerCPUMsPerDelivery  float64 `json:"managerCPUMsPerDelivery"`
	PeakRSSMiBKubernetes     float64 `json:"peakRSSMiBKubernetes"`
	PeakRSSMiBPostgres       float64 `json:"peakRSSMiBPostgres"`
	// The PostgreSQL store with events published through its publish API, and the
	// no-queue ceiling: signing and sending alone, nothing stored.
	PublishAPI    []scenarioResult `json:"publishAPI"`
	CeilingPerSec float64          `json:"ceilingPerSec"`
}

// publishScenarios are published through the publish API (1 KiB payloads).
var publishScenarios = []struct {
	name              string
	events, endpoints int
}{
	{"api-fanout-1", 20000, 1},
	{"api-fanout-20", 1000, 20},
}

// storeScenarios are the scenarios both stores run: events published as WebhookEvent
// resources, 1 and 20 endpoints, and half the 1-endpoint rate for latency.
var storeScenarios = []struct {
	name              string
	events, endpoints int
	halfRate          bool
}{
	{"fanout-1", 3000, 1, false},
	{"fanout-20", 300, 20, false},
	{"half-rate-latency", 600, 1, true},
}

// runStores runs the scenarios on a manager with the etcd store, then on one with the
// PostgreSQL store (Debian's PostgreSQL in a temporary directory), each with the
// shipped defaults.
func runStores(ctx context.Context, env *testenv.Env, kubeconfig, work string, out *storesResult) error {
	pg, err := testenv.StartDurablePostgres() // fsync on, as in production
	if err != nil {
		return err
	}
	defer func() { _ = pg.Remove() }()
	dsnFile := filepath.Join(work, "dsn")
	if err := os.WriteFile(dsnFile, []byte(pg.DSN), 0o600); err != nil {
		return err
	}
	recv, base, stopReceiver, err := serveReceiver()
	if err != nil {
		return err
	}
	defer stopReceiver()

	for _, store := range []string{"kubernetes", "postgres"} {
		var namespaces []string
		for _, s := range storeScenarios {
			namespaces = append(namespaces, "stores-"+store+"-"+s.name)
		}
		extra := append([]string{"--delivery-store=" + store}, noHistoryCounts...)
		publishAddr, err := freePort()
		if err != nil {
			return err
		}
		if store == "postgres" {
			extra = append(extra, "--archive-postgres-dsn-file="+dsnFile, "--publish-bind-address="+publishAddr)
			for _, s := range publishScenarios {
				namespaces = append(namespaces, "stores-"+s.name)
			}
		}
		mgr, err := startManager(kubeconfig, work, namespaces, extra...)
		if err != nil {
			return err
		}
		results := &out.Kubernetes
		if store == "postgres" {
			results = &out.Postgres
		}
		var walBefore int64
		var pgCPUBefore, mgrCPUBefore float64
		if store == "postgres" {
			if walBefore, err = walBytes(ctx, pg.DSN); err != nil {
				mgr.stop()
				return err
			}
			pgCPUBefore = processCPUSeconds("postgres")
			if m, err := mgr.metrics(); err == nil {
				mgrCPUBefore = m.get("process_cpu_seconds_total")
			}
		}
		for _, s := range storeScenarios {
			if err := mgr.waitIdle(ctx); err != nil {
				mgr.stop()
				return err
			}
			rate := 0.0
			if s.halfRate && len(*results) > 0 {
				rate = (*results)[0].DeliveriesPerSec / 2
			}
			events := n(s.events)
			fmt.Printf("stores: %s, %s: %d events x %d endpoints\n", store, s.name, events, s.endpoints)
			res, err := runScenario(ctx, env.Client, mgr, recv, base, "stores-"+store+"-"+s.name, events, s.endpoints, rate, 0, store == "postgres")
			if err != nil {
				mgr.stop()
				return fmt.Errorf("%s store, %s: %w", store, s.name, err)
			}
			res.Name = s.name
			*results = append(*results, res)
		}
		if store == "postgres" {
			for _, s := range publishScenarios {
				if err := mgr.waitIdle(ctx); err != nil {
					mgr.stop()
					return err
				}
				events := n(s.events)
				fmt.Printf("stores: postgres, %s: %d events x %d endpoints through the publish API\n", s.name, events, s.endpoints)
				var profiled chan error
				if s.endpoints == 1 && *cpuProfile != "" {
					profiled = make(chan error, 1)
					go func() { profiled <- mgr.profile(*cpuProfile, 8*time.Second) }()
				}
				res, err := runPublishScenario(ctx, env, mgr, recv, base, "stores-"+s.name, "https://"+publishAddr, events, s.endpoints)
				if err != nil {
					mgr.stop()
					return fmt.Errorf("publish API, %s: %w", s.name, err)
				}
				res.Name = s.name
				out.PublishAPI = append(out.PublishAPI, res)
				if profiled != nil {
					if err := <-profiled; err != nil {
						fmt.Fprintln(os.Stderr, "cpu profile:", err)
					}
				}
			}
			deliveries := 0
			for _, r := range append(*results, out.PublishAPI...) {
				deliveries += r.Deliveries
			}
			size, wal, err := queueBytes(ctx, pg.DSN, walBefore)
			if err != nil {
				mgr.stop()
				return err
			}
			out.PostgresCPUMsPerDelivery = 1000 * (processCPUSeconds("postgres") - pgCPUBefore) / float64(deliveries)
			if m, err := mgr.metrics(); err == nil {
				out.ManagerCPUMsPerDelivery = 1000 * (m.get("process_cpu_seconds_total") - mgrCPUBefore) / float64(deliveries)
			}
			out.PostgresBytesPerDelivery = float64(size) / float64(deliveries)
			out.PostgresWALPerDelivery = float64(wal) / float64(deliveries)
			out.PeakRSSMiBPostgres = mgr.peakRSSMiB()
		} else {
			out.PeakRSSMiBKubernetes = mgr.peakRSSMiB()
		}
		mgr.stop()
	}
	fmt.Println("stores: the no-queue ceiling (sign and send, nothing stored)")
	out.CeilingPerSec, err = measureCeiling(ctx, base, n(20000))
	return err
}

func walBytes(ctx context.Context, dsn string) (int64, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var lsn int64
	err = conn.QueryRow(ctx, `SELECT pg_current_wal_lsn() - '0/0'::pg_lsn`).Scan(&lsn)
	return lsn, err
}

// queueBytes is the size of the queue's tables with their indexes and TOAST, and the
// WAL written since walBefore.
func queueBytes(ctx context.Context, dsn string, walBefore int64) (size, wal int64, err error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(ctx)
	// The tables are partitioned by day: their size is their partitions'.
	if err := conn.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint
		FROM pg_partition_tree('hookline_queue_deliveries')`).Scan(&size); err != nil {
		return 0, 0, err
	}
	var events int64
	if err := conn.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint FROM pg_partition_tree('hookline_queue_events')`).Scan(&events); err != nil {
		return 0, 0, err
	}
	size += events
	now, err := walBytes(ctx, dsn)
	return size, now - walBefore, err
}

func printStores(r storesResult) {
	if len(r.Postgres) == 0 {
		return
	}
	fmt.Println("\nthe two delivery stores, side by side (events published as WebhookEvent resources):")
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tkubernetes/s\tpostgres/s\tratio\tp50 ms k8s/pg\tp99 ms k8s/pg\tAPI writes/delivery k8s/pg")
	for i, pg := range r.Postgres {
		k := r.Kubernetes[i]
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.2f\t%.1f / %.1f\t%.1f / %.1f\t%.2f / %.2f\n", pg.Name, k.DeliveriesPerSec, pg.DeliveriesPerSec,
			pg.DeliveriesPerSec/k.DeliveriesPerSec, k.LatencyMs["p50"], pg.LatencyMs["p50"], k.LatencyMs["p99"], pg.LatencyMs["p99"],
			k.WritesPerMsg, pg.WritesPerMsg)
	}
	_ = tw.Flush()
	for _, api := range r.PublishAPI {
		fmt.Printf("postgres, through the publish API: %s: %d deliveries, %.0f/s (%.2f of the no-queue ceiling, %.0f/s), API writes per delivery %.4f\n",
			api.Name, api.Deliveries, api.DeliveriesPerSec, api.DeliveriesPerSec/r.CeilingPerSec, r.CeilingPerSec, api.WritesPerMsg)
	}
	fmt.Printf("postgres: CPU per delivery %.3f ms in PostgreSQL, %.3f ms in the manager\n", r.PostgresCPUMsPerDelivery, r.ManagerCPUMsPerDelivery)
	fmt.Printf("postgres: %.0f B per delivery in the queue's tables and indexes, %.0f B of WAL per delivery; peak RSS %.0f MiB (kubernetes store: %.0f MiB)\n",
		r.PostgresBytesPerDelivery, r.PostgresWALPerDelivery, r.PeakRSSMiBPostgres, r.PeakRSSMiBKubernetes)
}

// judgeStores states the PostgreSQL store's targets.
func judgeStores(rep *report, met func(bool) string) {
	r := rep.Stores
	if len(r.Postgres) == 0 || len(r.PublishAPI) < 2 {
		return
	}
	etcd1 := r.Kubernetes[0].DeliveriesPerSec
	api1, api20 := r.PublishAPI[0], r.PublishAPI[1]
	rep.Targets["postgres store, publish API, 1 endpoint: >= 2,000 deliveries/s"] = fmt.Sprintf("%s (%.0f/s)", met(api1.DeliveriesPerSec >= 2000), api1.DeliveriesPerSec)
	rep.Targets["postgres store, publish API, 1 endpoint: >= 10 x the etcd store"] = fmt.Sprintf("%s (%.1f x %.0f/s)",
		met(api1.DeliveriesPerSec >= 10*etcd1), api1.DeliveriesPerSec/etcd1, etcd1)
	rep.Targets["postgres store, publish API, 20 endpoints: >= 5,000 deliveries/s"] = fmt.Sprintf("%s (%.0f/s)", met(api20.DeliveriesPerSec >= 5000), api20.DeliveriesPerSec)
	// What remains is per endpoint, not per delivery: its health (lastSuccessTime is
	// refreshed once a minute), so the bound is two writes per endpoint per minute.
	perEndpointOnly := func(r scenarioResult) bool {
		minutes := math.Ceil(float64(r.Deliveries) / r.DeliveriesPerSec / 60)
		return r.WritesPerMsg*float64(r.Deliveries) <= 2*float64(r.Endpoints)*minutes
	}
	rep.Targets["postgres store, publish API: no API server writes per delivery (only per endpoint: <= 2 a minute)"] = fmt.Sprintf("%s (%.0f and %.0f writes for %d deliveries each)",
		met(perEndpointOnly(api1) && perEndpointOnly(api20)), api1.WritesPerMsg*float64(api1.Deliveries), api20.WritesPerMsg*float64(api20.Deliveries), api1.Deliveries)
	half := r.Postgres[len(r.Postgres)-1]
	rep.Targets["postgres store, half rate: p99 <= 50 ms"] = fmt.Sprintf("%s (%.1f ms)", met(half.LatencyMs["p99"] <= 50), half.LatencyMs["p99"])
}

// processCPUSeconds sums the CPU time (user and system) of the running processes
// named comm, from /proc: PostgreSQL's postmaster and its backends.
func processCPUSeconds(comm string) float64 {
	dirs, _ := os.ReadDir("/proc")
	total := 0.0
	for _, d := range dirs {
		raw, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime(14) stime(15)
		s := string(raw)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open || s[open+1:close] != comm {
			continue
		}
		f := strings.Fields(s[close+2:])
		if len(f) < 13 {
			continue
		}
		utime, _ := strconv.ParseFloat(f[11], 64)
		stime, _ := strconv.ParseFloat(f[12], 64)
		total += (utime + stime) / clockTicks
	}
	return total
}

// clockTicks is USER_HZ, the unit of /proc's CPU times on Linux.
const clockTicks = 100
