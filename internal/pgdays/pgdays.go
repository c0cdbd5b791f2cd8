// Package pgdays keeps PostgreSQL tables partitioned by day (UTC): a day's partition is
// made once, when a row of that day is first written, and retention drops whole days,
// so that no delete runs on the hot path. The archive and the delivery queue use it.
package pgdays

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Day is the start of t's day, in UTC.
func Day(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }

// Name is the partition of table holding t's day.
func Name(table string, t time.Time) string { return table + "_" + t.UTC().Format("20060102") }

// Partitions makes and drops the daily partitions of tables in one database.
type Partitions struct {
	pool  *pgxpool.Pool
	mu    sync.Mutex
	known map[string]bool // partitions known to exist
}

// New returns the partitions of pool's database.
func New(pool *pgxpool.Pool) *Partitions {
	return &Partitions{pool: pool, known: map[string]bool{}}
}

// Ensure makes the partition of table for t's day unless it is known to exist.
func (p *Partitions) Ensure(ctx context.Context, table string, t time.Time) error {
	name := Name(table, t)
	p.mu.Lock()
	known := p.known[name]
	p.mu.Unlock()
	if known {
		return nil
	}
	from := Day(t)
	sql := fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s PARTITION OF %s FOR VALUES FROM ('%s') TO ('%s')`,
		pgx.Identifier{name}.Sanitize(), pgx.Identifier{table}.Sanitize(),
		from.Format(time.RFC3339), from.Add(24*time.Hour).Format(time.RFC3339))
	if _, err := p.pool.Exec(ctx, sql); err != nil {
		// Two writers may create it at once; it exists either way.
		if !strings.Contains(err.Error(), "already exists") {
			return err
		}
	}
	p.mu.Lock()
	p.known[name] = true
	p.mu.Unlock()
	return nil
}

// Days lists the days that have a partition of any of tables, oldest first.
func (p *Partitions) Days(ctx context.Context, tables ...string) ([]time.Time, error) {
	rows, err := p.pool.Query(ctx, `SELECT c.relname, pa.relname FROM pg_inherits i
		JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class pa ON pa.oid = i.inhparent
		WHERE pa.relname = ANY($1)`, tables)
	if err != nil {
		return nil, err
	}
	type child struct{ name, parent string }
	children, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (child, error) {
		var c child
		return c, row.Scan(&c.name, &c.parent)
	})
	if err != nil {
		return nil, err
	}
	seen := map[time.Time]bool{}
	var days []time.Time
	for _, c := range children {
		day, err := time.Parse("20060102", strings.TrimPrefix(c.name, c.parent+"_"))
		if err != nil || seen[day] {
			continue // not one of ours
		}
		seen[day] = true
		days = append(days, day)
	}
	sort.Slice(days, func(i, j int) bool { return days[i].Before(days[j]) })
	return days, nil
}

// Drop drops the partitions of tables for day in one transaction, in the order given,
// and returns the names of those that existed. keep, when set, is asked once they are
// locked (nothing can write to them then) whether the day must stay.
func (p *Partitions) Drop(ctx context.Context, day time.Time, keep func(context.Context, pgx.Tx) (bool, error), tables ...string) ([]string, error) {
	var dropped []string
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		dropped = nil
		for _, table := range tables {
			name := pgx.Identifier{Name(table, day)}.Sanitize()
			var exists bool
			if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&exists); err != nil {
				return err
			}
			if !exists {
				continue
			}
			if _, err := tx.Exec(ctx, "LOCK TABLE "+name+" IN ACCESS EXCLUSIVE MODE"); err != nil {
				return err
			}
			dropped = append(dropped, Name(table, day))
		}
		if len(dropped) == 0 {
			return nil
		}
		if keep != nil {
			kept, err := keep(ctx, tx)
			if err != nil || kept {
				dropped = nil
				return err
			}
		}
		for _, name := range dropped {
			if _, err := tx.Exec(ctx, "DROP TABLE "+pgx.Identifier{name}.Sanitize()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	for _, name := range dropped {
		delete(p.known, name)
	}
	p.mu.Unlock()
	return dropped, nil
}

// Forget forgets which partitions exist: another process may have dropped one.
func (p *Partitions) Forget() {
	p.mu.Lock()
	p.known = map[string]bool{}
	p.mu.Unlock()
}

// Ended reports whether day ends at or before cutoff: retention may drop it.
func Ended(day, cutoff time.Time) bool { return !day.Add(24 * time.Hour).After(cutoff) }
