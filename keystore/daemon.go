package keystore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// daemonsRel holds one document per running `atrest run`, so that
// `atrest status`, wherever it runs, can say what the daemons are doing.
const daemonsRel = "daemons"

// daemonMaxVersions: the document is rewritten at every poll; only the
// latest matters.
const daemonMaxVersions = 2

// DaemonState is what one `atrest run` reports about itself. It holds
// names, revisions, times and reasons; never key material.
type DaemonState struct {
	// Instance names the daemon (its host or pod name).
	Instance string `json:"instance"`
	Version  string `json:"version,omitempty"`
	// Heartbeat is when the daemon last wrote this document.
	Heartbeat time.Time `json:"heartbeat"`
	// Interval is its poll interval: a heartbeat much older than it means
	// the daemon is gone.
	Interval time.Duration `json:"interval"`
	// Revision is the Git revision in force; Refused says why a newer one
	// was refused (invalid cluster.yml, bad signature), "" when none was.
	Revision string `json:"revision,omitempty"`
	Refused  string `json:"refused,omitempty"`
	// Suspended is true when changes are suspended (setting or policy).
	Suspended bool `json:"suspended,omitempty"`
	// LastReconcile is when the last reconcile ended, with its result
	// ("in-sync", "changed", "failed", "stalled", "locked", "suspended")
	// and error.
	LastReconcile time.Time `json:"lastReconcile,omitzero"`
	Result        string    `json:"result,omitempty"`
	Error         string    `json:"error,omitempty"`
	// Failures counts consecutive failed reconciles; NextRetry is when the
	// next one runs after them.
	Failures  int       `json:"failures,omitempty"`
	NextRetry time.Time `json:"nextRetry,omitzero"`
	// Schedule and NextRotation are the rotation schedule in force and the
	// next rotation it asks for.
	Schedule     string    `json:"schedule,omitempty"`
	NextRotation time.Time `json:"nextRotation,omitzero"`
	// Stalled is the stable reason (a refusal's, RollbackFailed,
	// StepFailedRepeatedly) when the daemon changes nothing until a
	// person acts; Error then says what and why.
	Stalled string `json:"stalled,omitempty"`
	// Step is the step in flight, "" when idle.
	Step string `json:"step,omitempty"`
}

// Stale reports whether the daemon has not written for three intervals at
// now: it stopped, or cannot reach Vault.
func (d DaemonState) Stale(now time.Time) bool {
	iv := max(d.Interval, time.Minute)
	return now.Sub(d.Heartbeat) > 3*iv
}

// daemonRel is the document of instance. Instance names come from host
// names, which are safe path elements, but are cleaned anyway so a name
// can never reach another path.
func daemonRel(instance string) (string, error) {
	clean := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '-'
	}, instance)
	clean = strings.Trim(clean, ".")
	if clean == "" || len(clean) > 253 {
		return "", fmt.Errorf("%w: daemon instance name %q must be 1 to 253 letters, digits, '-', '_' or '.'", ErrInvalid, instance)
	}
	return daemonsRel + "/" + clean, nil
}

// PutDaemonState writes st as the state of st.Instance.
func (s *Store) PutDaemonState(ctx context.Context, st DaemonState) error {
	const op = "write daemon state"
	rel, err := daemonRel(st.Instance)
	if err != nil {
		return &OpError{Op: op, Path: s.path("data", daemonsRel), Err: err}
	}
	// Only this daemon writes its document, so a conflict means a second
	// daemon with the same name: the last writer wins, after a fresh read.
	for attempt := 0; ; attempt++ {
		e, err := s.kvRead(ctx, op, rel, 0)
		if err != nil {
			return err
		}
		_, err = s.kvPut(ctx, op, rel, e.version, daemonMaxVersions, st)
		if err == nil || !errors.Is(err, ErrConflict) || attempt >= 2 {
			return err
		}
	}
}

// DaemonStates reads the state of every daemon that ever reported, sorted
// by instance.
func (s *Store) DaemonStates(ctx context.Context) ([]DaemonState, error) {
	const op = "read daemon states"
	names, err := s.kvList(ctx, op, daemonsRel)
	if err != nil {
		return nil, err
	}
	var out []DaemonState
	for _, name := range names {
		if strings.HasSuffix(name, "/") {
			continue
		}
		rel := daemonsRel + "/" + name
		e, err := s.kvRead(ctx, op, rel, 0)
		if err != nil {
			return nil, err
		}
		if e.version == 0 {
			continue
		}
		var st DaemonState
		if err := s.decode(op, rel, e, &st); err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// ForgetDaemon deletes the state of instance (a daemon long gone).
func (s *Store) ForgetDaemon(ctx context.Context, instance string) error {
	rel, err := daemonRel(instance)
	if err != nil {
		return &OpError{Op: "forget daemon", Path: s.path("metadata", daemonsRel), Err: err}
	}
	return s.kvDestroy(ctx, "forget daemon", rel)
}
