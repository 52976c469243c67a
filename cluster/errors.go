package cluster

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// FieldError is one problem found in an input file, located by the file and
// the YAML path of the field, with what is wrong and, where known, the fix.
// It never carries the value of the field: values may be key material.
type FieldError struct {
	File   string // the file, as the user named it ("cluster.yml")
	Field  string // YAML path ("services.kube-api.secrets_encryption_config.enabled"); empty for the whole file
	Detail string // what is wrong and how to fix it
}

func (e *FieldError) Error() string {
	switch {
	case e.File == "" && e.Field == "":
		return e.Detail
	case e.Field == "":
		return e.File + ": " + e.Detail
	case e.File == "":
		return e.Field + ": " + e.Detail
	}
	return e.File + ": " + e.Field + ": " + e.Detail
}

// Errors is every problem found in one validation pass. Validation collects
// all of them, so that one run of `atrest validate` shows everything to fix.
type Errors []*FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Err returns es as an error, or nil when there is nothing in it.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}

// AsErrors returns the field errors inside err: the list when err is (or
// wraps) an Errors or a *FieldError, or nil.
func AsErrors(err error) Errors {
	var es Errors
	if errors.As(err, &es) {
		return es
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return Errors{fe}
	}
	return nil
}

// errorList accumulates field errors for one file.
type errorList struct {
	file string
	errs Errors
}

func (l *errorList) add(field, format string, args ...any) {
	l.errs = append(l.errs, &FieldError{File: l.file, Field: field, Detail: fmt.Sprintf(format, args...)})
}

func (l *errorList) addAll(es Errors) { l.errs = append(l.errs, es...) }

// unknownName is how an error names a field that is not known: as
// written, unless it holds something that looks like key material (a key
// pasted one line off becomes a mapping key, "secret c2Vj...:" a field
// name), which is never echoed.
func unknownName(name string) string {
	if scrub(name) != name {
		return fmt.Sprintf("<a %d-character name that holds what looks like key material>", len(name))
	}
	return name
}

// materialRun is a run of base64 or hex long enough to be key material.
var materialRun = regexp.MustCompile(`[A-Za-z0-9+/=_-]{16,}`)

// scrub replaces every run in msg that looks like key material: the net
// for parser messages that quote what they failed on (sigs.k8s.io/yaml
// prints a mapping's whole value for a key it cannot convert, such as ~).
func scrub(msg string) string {
	return materialRun.ReplaceAllStringFunc(msg, func(run string) string {
		if looksLikeMaterial(run) {
			return redacted
		}
		return run
	})
}

// looksLikeMaterial: long, all base64 or hex, with a digit, and an upper
// case letter, base64's punctuation or hex only. Field names of RKE and of
// the EncryptionConfiguration are words.
func looksLikeMaterial(s string) bool {
	if len(s) < 16 {
		return false
	}
	var digit, upper, punct bool
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
			digit = true
		case r >= 'A' && r <= 'Z':
			upper = true
		case r >= 'a' && r <= 'z':
		case r == '+' || r == '/' || r == '=':
			punct = true
		case r == '-' || r == '_':
		default:
			return false
		}
	}
	hexOnly := strings.Trim(s, "0123456789abcdefABCDEF") == ""
	return digit && (punct || upper || hexOnly)
}

func joinPath(parent, child string) string {
	switch {
	case parent == "":
		return child
	case child == "":
		return parent
	case strings.HasPrefix(child, "["):
		return parent + child
	}
	return parent + "." + child
}
