package timeline

import "testing"

func TestParse(t *testing.T) {
	doc := `{"metadata":{"name":"a"},"status":{"phase":"SANDBOX_PHASE_READY","create_timeline":[
		{"phase":"received","at_unix_us":"1000"},
		{"phase":"ready","at_unix_us":"4500","took_us":"3500"}]}}`
	tl, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(tl) != 2 || tl[0] != (Step{Phase: "received", At: 1000}) || tl[1] != (Step{Phase: "ready", At: 4500, Took: 3500}) {
		t.Fatalf("parsed %+v", tl)
	}
	if tl, err := Parse([]byte(`{"status":{}}`)); err != nil || len(tl) != 0 {
		t.Fatalf("no timeline: %+v, %v", tl, err)
	}
	if _, err := Parse([]byte(`{"status":{"create_timeline":[{"at_unix_us":12}]}}`)); err == nil {
		t.Fatal("a number where the JSON has a string was taken")
	}
	if _, err := Parse([]byte(`not json`)); err == nil {
		t.Fatal("not JSON was taken")
	}
}
