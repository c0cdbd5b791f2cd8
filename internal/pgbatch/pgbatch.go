// Package pgbatch sends a batch of statements in one round trip and says what each
// did: the archive's writes and the delivery queue's publishes and group commits.
package pgbatch

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Exec sends b in tx and returns the rows each statement affected, in order; the first
// error ends it.
func Exec(ctx context.Context, tx pgx.Tx, b *pgx.Batch) ([]int64, error) {
	results := tx.SendBatch(ctx, b)
	affected := make([]int64, 0, b.Len())
	for range b.Len() {
		tag, err := results.Exec()
		if err != nil {
			_ = results.Close()
			return nil, err
		}
		affected = append(affected, tag.RowsAffected())
	}
	return affected, results.Close()
}
