package api_test

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	_ "github.com/openshell/openshell/api/computev1"
	_ "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/optionsv1"
)

// The wire tables (testdata/wire-protocol.md, generated from upstream's descriptors:
// every RPC of openshell.v1.OpenShell and openshell.compute.v1.ComputeDriver, and
// every message and enum they reach) are compared with the descriptors compiled into
// this module: service and method names, request/response types, streaming kinds,
// authorization options; message field names, numbers, types, labels, oneofs,
// secret/deprecated markers and reserved numbers; enum values and numbers.

// extensionFieldBase is where the project's own fields in upstream messages start.
const extensionFieldBase = 1000

type rpcRow struct{ name, path, in, out, stream, auth string }

type fieldRow struct{ num, name, typ, label, oneof, notes string }

type section struct {
	full     string // fully-qualified message or enum name
	enum     bool
	rows     [][]string
	empty    bool // "No fields"
	reserved []string
}

var (
	headingRE = regexp.MustCompile("^##### (enum )?`([A-Za-z0-9_.]+)`")
	tick      = strings.NewReplacer("`", "", "**", "")
)

func cells(line string) []string {
	parts := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

func parseTables(t *testing.T) (rpcs []rpcRow, secs []*section) {
	t.Helper()
	f, err := os.Open("testdata/wire-protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cur *section
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := headingRE.FindStringSubmatch(line); m != nil {
			cur = &section{full: m[2], enum: m[1] != ""}
			secs = append(secs, cur)
			continue
		}
		if strings.HasPrefix(line, "## ") || strings.HasPrefix(line, "### ") {
			cur = nil
		}
		c := cells(line)
		switch {
		case strings.HasPrefix(line, "| `") && len(c) >= 5 && strings.HasPrefix(tick.Replace(c[1]), "/openshell."):
			r := rpcRow{name: tick.Replace(c[0]), path: tick.Replace(c[1]), in: tick.Replace(c[2]), out: tick.Replace(c[3]), stream: c[4]}
			if len(c) > 5 {
				r.auth = c[5]
			}
			rpcs = append(rpcs, r)
		case cur == nil:
		case strings.HasPrefix(line, "No fields"):
			cur.empty = true
		case strings.HasPrefix(line, "Reserved numbers: "):
			nums, _, _ := strings.Cut(strings.TrimPrefix(line, "Reserved numbers: "), ".")
			cur.reserved = strings.Split(nums, ", ")
		case strings.HasPrefix(line, "| ") && !strings.HasPrefix(line, "| #") && !strings.HasPrefix(line, "| Value") && !strings.HasPrefix(line, "|---"):
			cur.rows = append(cur.rows, c)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rpcs, secs
}

func pkgOf(full string) string { return full[:strings.LastIndex(full, ".")] }

// qualify makes a table type name fully qualified (bare = the given package).
func qualify(pkg, name string) string {
	if strings.Contains(name, ".") {
		return name
	}
	return pkg + "." + name
}

// typeName is the table spelling of a field's (or map value's) type.
func typeName(fd protoreflect.FieldDescriptor) string {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return string(fd.Message().FullName())
	case protoreflect.EnumKind:
		return string(fd.Enum().FullName())
	}
	return fd.Kind().String()
}

func TestDescriptorsMatchWireTables(t *testing.T) {
	rpcs, secs := parseTables(t)
	if len(rpcs) < 67+12 || len(secs) < 200 {
		t.Fatalf("parsed %d RPC rows and %d message/enum sections; the tables did not parse", len(rpcs), len(secs))
	}

	// Services: every table row is a method with the same shape, and every method is
	// a table row.
	perService := map[string]int{}
	for _, r := range rpcs {
		svcName, method, ok := strings.Cut(strings.TrimPrefix(r.path, "/"), "/")
		if !ok || method != r.name {
			t.Errorf("row %s: path %s", r.name, r.path)
			continue
		}
		perService[svcName]++
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svcName))
		if err != nil {
			t.Errorf("service %s: %v", svcName, err)
			continue
		}
		md := d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(method))
		if md == nil {
			t.Errorf("%s: no such method", r.path)
			continue
		}
		pkg := pkgOf(svcName)
		if got, want := string(md.Input().FullName()), qualify(pkg, r.in); got != want {
			t.Errorf("%s: request %s, table %s", r.path, got, want)
		}
		if got, want := string(md.Output().FullName()), qualify(pkg, r.out); got != want {
			t.Errorf("%s: response %s, table %s", r.path, got, want)
		}
		kind := "unary"
		switch {
		case md.IsStreamingClient() && md.IsStreamingServer():
			kind = "bidi"
		case md.IsStreamingClient():
			kind = "client-streaming"
		case md.IsStreamingServer():
			kind = "server-streaming"
		}
		if !strings.HasPrefix(r.stream, kind) {
			t.Errorf("%s: %s, table %q", r.path, kind, r.stream)
		}
		rule, _ := proto.GetExtension(md.Options(), optionsv1.E_Authorization).(*optionsv1.AuthorizationRule)
		var got []string
		for _, kv := range [][2]string{{"auth_mode", rule.GetAuthMode()}, {"workspace_role", rule.GetWorkspaceRole()}, {"global_role", rule.GetGlobalRole()}, {"scope", rule.GetScope()}} {
			if kv[1] != "" {
				got = append(got, kv[0]+"="+kv[1])
			}
		}
		var want []string
		for _, kv := range regexp.MustCompile("(\\w+)=`([^`]*)`").FindAllStringSubmatch(r.auth, -1) {
			want = append(want, kv[1]+"="+kv[2])
		}
		if !sameSet(got, want) {
			t.Errorf("%s: authorization %v, table %v", r.path, got, want)
		}
	}
	for svcName, n := range perService {
		d, _ := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svcName))
		if sd, ok := d.(protoreflect.ServiceDescriptor); ok && sd.Methods().Len() != n {
			t.Errorf("%s has %d methods, the tables list %d", svcName, sd.Methods().Len(), n)
		}
	}
	if perService["openshell.v1.OpenShell"] != 67 {
		t.Errorf("the tables list %d OpenShell RPCs, want upstream's 67", perService["openshell.v1.OpenShell"])
	}

	// Messages and enums.
	for _, s := range secs {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(s.full))
		if err != nil {
			t.Errorf("%s: not in the compiled descriptors: %v", s.full, err)
			continue
		}
		if s.enum {
			checkEnum(t, s, d)
			continue
		}
		md, ok := d.(protoreflect.MessageDescriptor)
		if !ok {
			t.Errorf("%s is a %T, the table says message", s.full, d)
			continue
		}
		checkMessage(t, s, md)
	}
}

func checkEnum(t *testing.T, s *section, d protoreflect.Descriptor) {
	ed, ok := d.(protoreflect.EnumDescriptor)
	if !ok {
		t.Errorf("%s is a %T, the table says enum", s.full, d)
		return
	}
	if ed.Values().Len() != len(s.rows) {
		t.Errorf("%s: %d values, table %d", s.full, ed.Values().Len(), len(s.rows))
	}
	for _, r := range s.rows {
		v := ed.Values().ByName(protoreflect.Name(tick.Replace(r[0])))
		if v == nil || strconv.Itoa(int(v.Number())) != r[1] {
			t.Errorf("%s: value %s = %s missing or renumbered", s.full, r[0], r[1])
		}
	}
}

func checkMessage(t *testing.T, s *section, md protoreflect.MessageDescriptor) {
	pkg := pkgOf(s.full)
	if s.empty && len(s.rows) > 0 {
		t.Errorf("%s: table says no fields but lists %d", s.full, len(s.rows))
	}
	// Project extensions to an upstream message are numbered from 1000 up, so a field
	// upstream adds later cannot collide; the table does not list them.
	upstreamFields := 0
	for i := 0; i < md.Fields().Len(); i++ {
		if md.Fields().Get(i).Number() < extensionFieldBase {
			upstreamFields++
		}
	}
	if upstreamFields != len(s.rows) {
		t.Errorf("%s: %d fields numbered below %d, table %d", s.full, upstreamFields, extensionFieldBase, len(s.rows))
	}
	for _, c := range s.rows {
		if len(c) < 6 {
			t.Errorf("%s: short row %v", s.full, c)
			continue
		}
		r := fieldRow{num: c[0], name: tick.Replace(c[1]), typ: tick.Replace(c[2]), label: tick.Replace(c[3]), oneof: tick.Replace(c[4]), notes: c[5]}
		fd := md.Fields().ByName(protoreflect.Name(r.name))
		if fd == nil {
			t.Errorf("%s.%s: missing", s.full, r.name)
			continue
		}
		if strconv.Itoa(int(fd.Number())) != r.num {
			t.Errorf("%s: #%d, table #%s", fd.FullName(), fd.Number(), r.num)
		}
		var label, typ string
		switch {
		case fd.IsMap():
			label = "map"
			typ = fmt.Sprintf("map<%s, %s>", typeName(fd.MapKey()), typeName(fd.MapValue()))
		case fd.Cardinality() == protoreflect.Repeated:
			label, typ = "repeated", typeName(fd)
		case fd.HasOptionalKeyword():
			label, typ = "optional", typeName(fd)
		default:
			label, typ = "singular", typeName(fd)
		}
		want := r.typ
		if k, v, ok := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(want, "map<"), ">"), ", "); ok && strings.HasPrefix(want, "map<") {
			if !strings.Contains(v, ".") && !isScalar(v) {
				v = qualify(pkg, v)
			}
			want = fmt.Sprintf("map<%s, %s>", k, v)
		} else if !isScalar(want) {
			want = qualify(pkg, want)
		}
		if typ != want || label != r.label {
			t.Errorf("%s: %s %s, table %s %s", fd.FullName(), label, typ, r.label, want)
		}
		oneof := ""
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			oneof = string(od.Name())
		}
		if oneof != r.oneof {
			t.Errorf("%s: oneof %q, table %q", fd.FullName(), oneof, r.oneof)
		}
		secret, _ := proto.GetExtension(fd.Options(), optionsv1.E_Secret).(bool)
		if secret != strings.Contains(r.notes, "secret=true") {
			t.Errorf("%s: secret=%v, table notes %q", fd.FullName(), secret, r.notes)
		}
		if dep := fd.Options().(interface{ GetDeprecated() bool }).GetDeprecated(); dep != strings.Contains(r.notes, "deprecated=true") {
			t.Errorf("%s: deprecated=%v, table notes %q", fd.FullName(), dep, r.notes)
		}
	}
	for _, n := range s.reserved {
		if v, err := strconv.Atoi(n); err == nil && !md.ReservedRanges().Has(protoreflect.FieldNumber(v)) {
			t.Errorf("%s: number %d not reserved", s.full, v)
		}
	}
}

func isScalar(s string) bool {
	switch s {
	case "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64",
		"sfixed32", "sfixed64", "bool", "string", "bytes":
		return true
	}
	return false
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, x := range a {
		m[x]++
	}
	for _, x := range b {
		m[x]--
	}
	for _, v := range m {
		if v != 0 {
			return false
		}
	}
	return true
}
