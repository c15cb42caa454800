package policy

import (
	"fmt"
	"strings"
)

// FieldError is one problem in a policy, located by field path and (for YAML input)
// line number.
type FieldError struct {
	Path string // e.g. network_policies.github.endpoints[0].host; "(document)" for syntax errors
	Line int    // 1-based; 0 when unknown (policies from protobuf)
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s (line %d): %s", e.Path, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Msg)
}

// ValidationError holds every problem found; errors.As it to list them.
type ValidationError struct {
	Errors []*FieldError
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		parts[i] = fe.Error()
	}
	return "invalid policy: " + strings.Join(parts, "; ")
}

type fieldErrors []*FieldError

func (f *fieldErrors) add(path string, line int, msg string) {
	*f = append(*f, &FieldError{Path: path, Line: line, Msg: msg})
}

func (f fieldErrors) err() error {
	if len(f) == 0 {
		return nil
	}
	return &ValidationError{Errors: f}
}
