package gateway

import (
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/openshell/openshell/api/datamodelv1"
	"github.com/openshell/openshell/supervisor/credentials"
)

// Provider rows written before providers were upstream's datamodel.Provider hold a
// sealed message of the project's own earlier shape:
//
//	1: string name   2: string type   3: map<string,string> credentials
//	4: repeated string hosts   5: repeated string headers   6: bool allow_wildcard_hosts
//
// The current payload never sets field 1 (the row holds the metadata), so a payload
// with field 1 is read with this decoder instead of being refused as corrupt; the next
// UpdateProvider rewrites it in the current shape.

// isLegacyProvider reports whether plain starts a field-1 string, which only the
// earlier shape has.
func isLegacyProvider(plain []byte) bool {
	num, typ, n := protowire.ConsumeTag(plain)
	return n > 0 && num == 1 && typ == protowire.BytesType
}

func decodeLegacyProvider(b []byte) (*datamodelv1.Provider, error) {
	p := &datamodelv1.Provider{Credentials: map[string]string{}}
	var binding credentials.Provider // hosts, headers, allow_wildcard_hosts
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil, protowire.ParseError(m)
			}
			b = b[m:]
			if !utf8.Valid(v) && num != 3 {
				return nil, fmt.Errorf("field %d is not UTF-8", num)
			}
			switch num {
			case 2:
				p.Type = string(v)
			case 3:
				k, val, err := decodeMapEntry(v)
				if err != nil {
					return nil, fmt.Errorf("credentials entry: %w", err)
				}
				p.Credentials[k] = val
			case 4:
				binding.Hosts = append(binding.Hosts, string(v))
			case 5:
				binding.Headers = append(binding.Headers, string(v))
			}
		case typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return nil, protowire.ParseError(m)
			}
			b = b[m:]
			if num == 6 && v != 0 {
				binding.AllowWildcardHosts = true
			}
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return nil, protowire.ParseError(m)
			}
			b = b[m:]
		}
	}
	p.Config = binding.Config()
	return p, nil
}

// decodeMapEntry reads a map<string,string> entry (key 1, value 2).
func decodeMapEntry(b []byte) (k, v string, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType {
			return "", "", fmt.Errorf("bad map entry tag")
		}
		b = b[n:]
		s, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return "", "", protowire.ParseError(m)
		}
		b = b[m:]
		if !utf8.Valid(s) {
			return "", "", fmt.Errorf("map entry field %d is not UTF-8", num)
		}
		switch num {
		case 1:
			k = string(s)
		case 2:
			v = string(s)
		}
	}
	return k, v, nil
}
