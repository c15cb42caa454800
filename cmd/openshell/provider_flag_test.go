package main

import (
	"slices"
	"testing"
)

func TestBuildCreateRequestProviders(t *testing.T) {
	req, err := buildCreateRequest(createOptions{name: "dev", providers: []string{"github", "llm"}}, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(req.GetSpec().GetProviders(), []string{"github", "llm"}) {
		t.Fatalf("spec.providers = %v", req.GetSpec().GetProviders())
	}
	cmd := (&app{}).sandboxCreate(new(string))
	if f := cmd.Flags().Lookup("provider"); f == nil || f.Value.Type() != "stringArray" {
		t.Fatalf("sandbox create has no repeatable --provider flag: %v", f)
	}
}
