package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	"github.com/openshell/openshell/api/datamodelv1"
	"github.com/openshell/openshell/api/openshellv1"
)

func checkOutput(o string) error {
	switch o {
	case "table", "json", "yaml":
		return nil
	}
	return fmt.Errorf("--output %q is not supported; use table, json or yaml", o)
}

var pj = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false}

// printStructured writes v (a proto message, a slice of them, or plain data) as JSON
// or YAML.
func printStructured(w io.Writer, format string, v any) error {
	data, err := toJSONValue(v)
	if err != nil {
		return err
	}
	if format == "yaml" {
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		defer enc.Close()
		return enc.Encode(data)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(data)
}

func toJSONValue(v any) (any, error) {
	switch x := v.(type) {
	case proto.Message:
		b, err := pj.Marshal(x)
		if err != nil {
			return nil, err
		}
		var out any
		return out, json.Unmarshal(b, &out)
	case []*openshellv1.Sandbox:
		out := make([]any, 0, len(x))
		for _, m := range x {
			e, err := toJSONValue(m)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
		return out, nil
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		var out any
		return out, json.Unmarshal(b, &out)
	}
}

func phaseString(p openshellv1.SandboxPhase) string {
	return strings.TrimPrefix(p.String(), "SANDBOX_PHASE_")
}

func age(ms int64) string {
	if ms == 0 {
		return "-"
	}
	d := time.Since(time.UnixMilli(ms)).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// readyDetail is the Ready condition's reason and message, for progress and tables.
func readyDetail(sb *openshellv1.Sandbox) string {
	for _, c := range sb.GetStatus().GetConditions() {
		if c.GetType() == "Ready" && !strings.EqualFold(c.GetStatus(), "True") {
			if c.GetMessage() != "" {
				return c.GetReason() + ": " + c.GetMessage()
			}
			return c.GetReason()
		}
	}
	return ""
}

func printSandboxTable(w io.Writer, sbs []*openshellv1.Sandbox, showWorkspace bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if showWorkspace {
		fmt.Fprint(tw, "WORKSPACE\t")
	}
	fmt.Fprintln(tw, "NAME\tPHASE\tIMAGE\tAGE\tID")
	for _, sb := range sbs {
		if showWorkspace {
			fmt.Fprintf(tw, "%s\t", sb.GetMetadata().GetWorkspace())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", sb.GetMetadata().GetName(), phaseString(sb.GetStatus().GetPhase()),
			sb.GetSpec().GetTemplate().GetImage(), age(sb.GetMetadata().GetCreatedAtMs()), sb.GetMetadata().GetId())
	}
	return tw.Flush()
}

func printSandboxDetail(w io.Writer, sb *openshellv1.Sandbox) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	md, st := sb.GetMetadata(), sb.GetStatus()
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("Name", md.GetName())
	row("ID", md.GetId())
	row("Workspace", md.GetWorkspace())
	row("Phase", phaseString(st.GetPhase()))
	row("Image", sb.GetSpec().GetTemplate().GetImage())
	row("Command", strings.Join(sb.GetSpec().GetCommand(), " "))
	row("Created", time.UnixMilli(md.GetCreatedAtMs()).Format(time.RFC3339))
	if len(md.GetLabels()) > 0 {
		var ls []string
		for k, v := range md.GetLabels() {
			ls = append(ls, k+"="+v)
		}
		row("Labels", strings.Join(ls, ","))
	}
	row("Instance", st.GetAgentPod())
	if p := st.GetFromPool(); p != "" {
		row("From pool", p+" (a pre-booted VM)")
	}
	if n := st.GetFromSnapshot(); n != "" {
		row("From snapshot", n)
	}
	if st.ExitCode != nil {
		row("Exit code", fmt.Sprint(st.GetExitCode()))
	}
	for _, c := range st.GetConditions() {
		row("Condition "+c.GetType(), strings.TrimSpace(fmt.Sprintf("%s %s %s", c.GetStatus(), c.GetReason(), c.GetMessage())))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return printTimeline(w, st.GetCreateTimeline())
}

// printTimeline writes the create timeline as a table: phase, when it ended (local
// time), how long it took; then the total.
func printTimeline(w io.Writer, tl []*datamodelv1.TimelineStep) error {
	if len(tl) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "Create timeline:")
	fmt.Fprintln(tw, "  PHASE\tAT\tTOOK")
	ms := func(us int64) string { return fmt.Sprintf("%.1f ms", float64(us)/1000) }
	for _, s := range tl {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", s.GetPhase(), time.UnixMicro(s.GetAtUnixUs()).Format("15:04:05.000"), ms(s.GetTookUs()))
	}
	fmt.Fprintf(tw, "  total\t\t%s\n", ms(tl[len(tl)-1].GetAtUnixUs()-tl[0].GetAtUnixUs()))
	return tw.Flush()
}
