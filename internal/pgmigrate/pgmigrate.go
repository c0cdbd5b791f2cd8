// Package pgmigrate applies embedded SQL migrations to PostgreSQL, each once, under an
// advisory lock so that managers starting together do not race. The archive and the
// delivery queue share its bookkeeping table; their versions carry a prefix each.
package pgmigrate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// lockID is the advisory lock every hookline migration takes.
const lockID = 7311969001

// Apply applies the files matching pattern in files, in name order; a file's version
// is prefix + its name without ".sql".
func Apply(ctx context.Context, pool *pgxpool.Pool, files fs.FS, pattern, prefix string) error {
	names, err := fs.Glob(files, pattern)
	if err != nil {
		return err
	}
	slices.Sort(names)
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS hookline_schema_migrations (
			version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		for _, name := range names {
			base := name[strings.LastIndexByte(name, '/')+1:]
			version := prefix + strings.TrimSuffix(base, ".sql")
			var done bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM hookline_schema_migrations WHERE version = $1)`, version).Scan(&done); err != nil {
				return err
			}
			if done {
				continue
			}
			sql, err := fs.ReadFile(files, name)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, string(sql)); err != nil {
				return fmt.Errorf("%s: %w", version, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO hookline_schema_migrations (version) VALUES ($1)`, version); err != nil {
				return err
			}
		}
		return nil
	})
}

// Redact removes a DSN (which may hold a password) from an error.
func Redact(err error, dsn string) error {
	if err == nil {
		return nil
	}
	if dsn != "" && strings.Contains(err.Error(), dsn) {
		return errors.New(strings.ReplaceAll(err.Error(), dsn, "<dsn>"))
	}
	return err
}
