// Package conncount counts the connections an HTTP server has open, for the tests and
// benchmarks that prove a cap on the connections hookline opens to receivers.
package conncount

import (
	"net"
	"net/http"
	"sync"
)

// Counter is an http.Server's ConnState hook that keeps the open and peak counts.
type Counter struct {
	mu         sync.Mutex
	open, peak int
}

// ConnState is the hook to set as http.Server.ConnState.
func (c *Counter) ConnState(_ net.Conn, state http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch state {
	case http.StateNew:
		c.open++
		c.peak = max(c.peak, c.open)
	case http.StateClosed, http.StateHijacked:
		c.open--
	}
}

// Peak is the most connections that were open at once.
func (c *Counter) Peak() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peak
}
