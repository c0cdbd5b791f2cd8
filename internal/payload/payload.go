// Package payload holds the limits on an event's payload, shared by the admission
// webhook (which refuses a payload beyond them) and the controllers (which refuse to
// deliver one that got in while admission was off).
package payload

import (
	"bytes"
	"fmt"

	"github.com/hookline/hookline/internal/jsondepth"
)

const (
	// MaxBytes is the largest payload accepted, as compact JSON.
	MaxBytes = 256 << 10
	// MaxDepth is the deepest nesting of objects and arrays accepted, the payload
	// object itself being level 1. Real webhook payloads stay under 10; a limit far
	// above that refuses nothing real and keeps every decoder on the way safe.
	MaxDepth = 64
)

// Check reports what is wrong with a payload (compact JSON), as a message for the
// user that names the limit, or nil.
func Check(raw []byte) error {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return fmt.Errorf("spec.payload must be a JSON object")
	}
	if len(trimmed) > MaxBytes {
		return fmt.Errorf("spec.payload is %d bytes; at most %d (256 KiB) are accepted", len(trimmed), MaxBytes)
	}
	// The depth measured may be of a payload already cut short (jsondepth.Capped), so
	// the message names the limit rather than the depth.
	if jsondepth.Depth(trimmed) > MaxDepth {
		return fmt.Errorf("spec.payload is nested more than %d levels deep; at most %d levels of objects and arrays are accepted", MaxDepth, MaxDepth)
	}
	return nil
}
