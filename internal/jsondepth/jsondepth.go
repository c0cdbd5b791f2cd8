// Package jsondepth measures and bounds the nesting depth of JSON without decoding it.
//
// Go's JSON decoders (encoding/json and sigs.k8s.io/json, which client-go uses) refuse
// a document nested more than 10,000 levels deep. An object the API server accepted
// can still exceed that once it is wrapped in a list or a watch event, and one such
// object then makes every LIST of its kind undecodable: the informer of that kind
// stops for every namespace. These functions work on bytes, with no depth limit of
// their own, so the manager can see such an object coming and defuse it.
package jsondepth

import (
	"io"
	"sync"
)

// Depth is the deepest nesting of objects and arrays in data: 0 for a scalar, 1 for
// {} or [], 2 for {"a":{}}. It does not validate the JSON.
func Depth(data []byte) int {
	var s scanner
	deepest := 0
	for _, c := range data {
		s.step(c)
		deepest = max(deepest, s.depth)
	}
	return deepest
}

// scanner follows strings and nesting, byte by byte.
type scanner struct {
	depth    int
	inString bool
	escaped  bool
}

// step advances over c and reports whether c opened or closed a level outside a string.
func (s *scanner) step(c byte) (opened, closed bool) {
	if s.inString {
		switch {
		case s.escaped:
			s.escaped = false
		case c == '\\':
			s.escaped = true
		case c == '"':
			s.inString = false
		}
		return false, false
	}
	switch c {
	case '"':
		s.inString = true
	case '{', '[':
		s.depth++
		return true, false
	case '}', ']':
		s.depth--
		return false, true
	}
	return false, false
}

// Capped returns a reader of r in which every object or array nested deeper than max
// is replaced by null. A stream of several documents (a watch) is capped document by
// document. Documents within the cap pass through byte for byte.
func Capped(r io.Reader, max int) io.Reader {
	return &cappedReader{src: r, max: max}
}

// buffers are the read buffers of capped readers: every API response goes through one,
// so they are reused rather than left to the collector.
var buffers = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

type cappedReader struct {
	src       io.Reader
	max       int
	buf       *[]byte // from buffers, taken at the first read
	out       []byte  // processed bytes not read yet
	s         scanner
	skipUntil int // while > 0: inside a replaced value that opened at this depth
	err       error
}

func (c *cappedReader) Read(p []byte) (int, error) {
	if c.buf == nil && c.err == nil {
		c.buf = buffers.Get().(*[]byte)
	}
	for len(c.out) == 0 && c.err == nil {
		n, err := c.src.Read(*c.buf)
		c.process((*c.buf)[:n])
		c.err = err
	}
	if c.err != nil && c.buf != nil {
		// The source is done: the buffer goes back, from the reading goroutine (a
		// watch's body is closed from another one while a read is blocked).
		buffers.Put(c.buf)
		c.buf = nil
	}
	if len(c.out) > 0 {
		n := copy(p, c.out)
		c.out = c.out[n:]
		return n, nil
	}
	return 0, c.err
}

func (c *cappedReader) process(chunk []byte) {
	c.out = c.out[:0]
	start := 0 // first byte of chunk not yet copied or dropped
	for i, b := range chunk {
		opened, closed := c.s.step(b)
		switch {
		case c.skipUntil > 0:
			if closed && c.s.depth < c.skipUntil {
				c.skipUntil = 0
				c.out = append(c.out, "null"...)
				start = i + 1
			}
		case opened && c.s.depth > c.max:
			c.out = append(c.out, chunk[start:i]...)
			c.skipUntil = c.s.depth
		}
	}
	if c.skipUntil == 0 {
		c.out = append(c.out, chunk[start:]...)
	}
}
