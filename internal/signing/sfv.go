package signing

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// A small RFC 8941 (Structured Field Values) dictionary parser: enough for
// Signature-Input and Signature. It never panics; errors say where the input broke.

type sfKind int

const (
	sfInteger sfKind = iota + 1
	sfStringKind
	sfToken
	sfBytes
	sfBool
)

type sfItem struct {
	kind  sfKind
	num   int64
	str   string // string or token
	bytes []byte
	bool  bool
}

type sfParam struct {
	key   string
	value sfItem
}

// sfMember is a dictionary member: an item, or an inner list when isList is set.
type sfMember struct {
	isList bool
	item   sfItem
	list   []sfItem // inner-list items (their own parameters are not used here)
	params []sfParam
}

type sfDictEntry struct {
	key    string
	member sfMember
}

type sfParser struct {
	s   string
	pos int
}

func (p *sfParser) errorf(format string, args ...any) error {
	return fmt.Errorf("structured field: at %d: %s", p.pos, fmt.Sprintf(format, args...))
}

func (p *sfParser) skipSP() {
	for p.pos < len(p.s) && p.s[p.pos] == ' ' {
		p.pos++
	}
}

func (p *sfParser) skipOWS() {
	for p.pos < len(p.s) && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t') {
		p.pos++
	}
}

// parseSFDictionary parses a whole header value as a dictionary.
func parseSFDictionary(s string) ([]sfDictEntry, error) {
	p := &sfParser{s: s}
	p.skipSP()
	var out []sfDictEntry
	for p.pos < len(p.s) {
		key, err := p.parseKey()
		if err != nil {
			return nil, err
		}
		var m sfMember
		if p.pos < len(p.s) && p.s[p.pos] == '=' {
			p.pos++
			if m, err = p.parseMember(); err != nil {
				return nil, err
			}
		} else {
			m.item = sfItem{kind: sfBool, bool: true}
			if m.params, err = p.parseParams(); err != nil {
				return nil, err
			}
		}
		replaced := false
		for i := range out {
			if out[i].key == key {
				out[i].member, replaced = m, true
			}
		}
		if !replaced {
			out = append(out, sfDictEntry{key, m})
		}
		p.skipOWS()
		if p.pos >= len(p.s) {
			return out, nil
		}
		if p.s[p.pos] != ',' {
			return nil, p.errorf("expected ','")
		}
		p.pos++
		p.skipOWS()
		if p.pos >= len(p.s) {
			return nil, p.errorf("trailing ','")
		}
	}
	return out, nil
}

func (p *sfParser) parseMember() (sfMember, error) {
	if p.pos < len(p.s) && p.s[p.pos] == '(' {
		list, err := p.parseInnerList()
		if err != nil {
			return sfMember{}, err
		}
		params, err := p.parseParams()
		return sfMember{isList: true, list: list, params: params}, err
	}
	item, err := p.parseBareItem()
	if err != nil {
		return sfMember{}, err
	}
	params, err := p.parseParams()
	return sfMember{item: item, params: params}, err
}

func (p *sfParser) parseInnerList() ([]sfItem, error) {
	p.pos++ // '('
	var items []sfItem
	for p.pos < len(p.s) {
		p.skipSP()
		if p.pos < len(p.s) && p.s[p.pos] == ')' {
			p.pos++
			return items, nil
		}
		item, err := p.parseBareItem()
		if err != nil {
			return nil, err
		}
		if _, err := p.parseParams(); err != nil {
			return nil, err
		}
		items = append(items, item)
		if p.pos < len(p.s) && p.s[p.pos] != ' ' && p.s[p.pos] != ')' {
			return nil, p.errorf("expected ' ' or ')' in inner list")
		}
	}
	return nil, p.errorf("unterminated inner list")
}

func (p *sfParser) parseParams() ([]sfParam, error) {
	var params []sfParam
	for p.pos < len(p.s) && p.s[p.pos] == ';' {
		p.pos++
		p.skipSP()
		key, err := p.parseKey()
		if err != nil {
			return nil, err
		}
		value := sfItem{kind: sfBool, bool: true}
		if p.pos < len(p.s) && p.s[p.pos] == '=' {
			p.pos++
			if value, err = p.parseBareItem(); err != nil {
				return nil, err
			}
		}
		params = append(params, sfParam{key, value})
	}
	return params, nil
}

func (p *sfParser) parseKey() (string, error) {
	start := p.pos
	if p.pos >= len(p.s) || !(p.s[p.pos] == '*' || (p.s[p.pos] >= 'a' && p.s[p.pos] <= 'z')) {
		return "", p.errorf("expected a key")
	}
	for p.pos < len(p.s) {
		c := p.s[p.pos]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '*') {
			break
		}
		p.pos++
	}
	return p.s[start:p.pos], nil
}

func (p *sfParser) parseBareItem() (sfItem, error) {
	if p.pos >= len(p.s) {
		return sfItem{}, p.errorf("expected an item")
	}
	c := p.s[p.pos]
	switch {
	case c == '-' || c >= '0' && c <= '9':
		start := p.pos
		p.pos++
		for p.pos < len(p.s) && p.s[p.pos] >= '0' && p.s[p.pos] <= '9' {
			p.pos++
		}
		if p.pos < len(p.s) && p.s[p.pos] == '.' {
			return sfItem{}, p.errorf("decimals are not supported here")
		}
		n, err := strconv.ParseInt(p.s[start:p.pos], 10, 64)
		if err != nil || p.pos-start > 16 {
			return sfItem{}, p.errorf("bad integer")
		}
		return sfItem{kind: sfInteger, num: n}, nil
	case c == '"':
		p.pos++
		var b strings.Builder
		for p.pos < len(p.s) {
			c := p.s[p.pos]
			p.pos++
			switch {
			case c == '\\':
				if p.pos >= len(p.s) || (p.s[p.pos] != '"' && p.s[p.pos] != '\\') {
					return sfItem{}, p.errorf("bad escape in string")
				}
				b.WriteByte(p.s[p.pos])
				p.pos++
			case c == '"':
				return sfItem{kind: sfStringKind, str: b.String()}, nil
			case c < 0x20 || c > 0x7e:
				return sfItem{}, p.errorf("bad character in string")
			default:
				b.WriteByte(c)
			}
		}
		return sfItem{}, p.errorf("unterminated string")
	case c == ':':
		end := strings.IndexByte(p.s[p.pos+1:], ':')
		if end < 0 {
			return sfItem{}, p.errorf("unterminated byte sequence")
		}
		raw, err := base64.StdEncoding.DecodeString(p.s[p.pos+1 : p.pos+1+end])
		if err != nil {
			return sfItem{}, p.errorf("byte sequence is not base64")
		}
		p.pos += end + 2
		return sfItem{kind: sfBytes, bytes: raw}, nil
	case c == '?':
		if p.pos+1 >= len(p.s) || (p.s[p.pos+1] != '0' && p.s[p.pos+1] != '1') {
			return sfItem{}, p.errorf("bad boolean")
		}
		v := p.s[p.pos+1] == '1'
		p.pos += 2
		return sfItem{kind: sfBool, bool: v}, nil
	case c == '*' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		start := p.pos
		for p.pos < len(p.s) && isTokenChar(p.s[p.pos]) {
			p.pos++
		}
		return sfItem{kind: sfToken, str: p.s[start:p.pos]}, nil
	}
	return sfItem{}, p.errorf("unexpected %q", c)
}

func isTokenChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		strings.IndexByte("!#$%&'*+-.^_`|~:/", c) >= 0
}

// serialize writes the item in RFC 8941 canonical form.
func (it sfItem) serialize(b *strings.Builder) {
	switch it.kind {
	case sfInteger:
		b.WriteString(strconv.FormatInt(it.num, 10))
	case sfStringKind:
		b.WriteString(sfString(it.str))
	case sfToken:
		b.WriteString(it.str)
	case sfBytes:
		b.WriteString(":" + base64.StdEncoding.EncodeToString(it.bytes) + ":")
	case sfBool:
		if it.bool {
			b.WriteString("?1")
		} else {
			b.WriteString("?0")
		}
	}
}

// serializeInnerList writes an inner list with its parameters in canonical form, as
// @signature-params must be.
func (m sfMember) serializeInnerList() string {
	var b strings.Builder
	b.WriteByte('(')
	for i, it := range m.list {
		if i > 0 {
			b.WriteByte(' ')
		}
		it.serialize(&b)
	}
	b.WriteByte(')')
	for _, p := range m.params {
		b.WriteByte(';')
		b.WriteString(p.key)
		if p.value.kind == sfBool && p.value.bool {
			continue
		}
		b.WriteByte('=')
		p.value.serialize(&b)
	}
	return b.String()
}

var errNotFound = errors.New("not found")

func (m sfMember) param(key string) (sfItem, error) {
	for _, p := range m.params {
		if p.key == key {
			return p.value, nil
		}
	}
	return sfItem{}, errNotFound
}
