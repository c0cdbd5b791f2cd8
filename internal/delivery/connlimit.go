package delivery

import (
	"context"
	"net"
	"sync"
	"time"
)

// idleCloseInterval is how often a dial waiting for a slot closes idle connections.
const idleCloseInterval = 10 * time.Millisecond

// connLimiter makes the manager-wide cap on attempts a hard cap on open connections:
// a dial takes a slot, the connection's Close gives it back. Idle keep-alive
// connections hold slots too, so a dial that finds none free first asks the pool to
// close its idle ones.
type connLimiter struct {
	slots     chan struct{}
	closeIdle func() // the transport's CloseIdleConnections
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
}

func newConnLimiter(max int, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *connLimiter {
	return &connLimiter{slots: make(chan struct{}, max), dial: dial}
}

// DialContext dials once a slot is free, or fails when ctx ends first.
func (l *connLimiter) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	default:
		// Every slot is taken: idle connections are closed to make room, again and
		// again while waiting, since a finished attempt returns its connection to the
		// idle pool rather than closing it.
		tick := time.NewTicker(idleCloseInterval)
		defer tick.Stop()
		for acquired := false; !acquired; {
			if l.closeIdle != nil {
				l.closeIdle()
			}
			select {
			case l.slots <- struct{}{}:
				acquired = true
			case <-tick.C:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	conn, err := l.dial(ctx, network, addr)
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitedConn{Conn: conn, release: func() { <-l.slots }}, nil
}

// Open is the number of connections open now.
func (l *connLimiter) Open() int { return len(l.slots) }

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
