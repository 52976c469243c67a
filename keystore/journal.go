package keystore

import (
	"fmt"
	"time"
)

// Bounds of what the keyring document keeps of failures: it is read and
// written at every step, and Vault refuses an entry over its size limit
// (1 MiB with integrated storage), which would block atrest even after the
// cause is fixed.
const (
	// MaxJournalSteps is how many journal steps are kept; older ones are
	// dropped (the logs keep them).
	MaxJournalSteps = 32
	// MaxErrorText is how much of an error the keyring keeps: its start
	// and its end (a log tail ends an error), with what was cut between.
	MaxErrorText = 2048
)

// CapText keeps at most MaxErrorText bytes of s: its first and last
// halves, and how much was cut between them.
func CapText(s string) string {
	if len(s) <= MaxErrorText {
		return s
	}
	half := MaxErrorText/2 - 32
	head, tail := s[:half], s[len(s)-half:]
	return fmt.Sprintf("%s\n[... %d bytes cut ...]\n%s", head, len(s)-2*half, tail)
}

// Append adds step to the journal, keeping it bounded: a step run again
// after it failed replaces its failed entry (Attempts counts the runs), and
// only the last MaxJournalSteps entries are kept.
func (j *Journal) Append(step JournalStep) {
	step.Error = CapText(step.Error)
	if step.Attempts == 0 {
		step.Attempts = 1
	}
	if n := len(j.Steps); n > 0 {
		last := j.Steps[n-1]
		if last.State == StepFailed && last.Name == step.Name && last.Detail == step.Detail {
			step.Attempts = last.Attempts + 1
			j.Steps = j.Steps[:n-1]
		}
	}
	j.Steps = append(j.Steps, step)
	if n := len(j.Steps); n > MaxJournalSteps {
		j.Steps = append([]JournalStep(nil), j.Steps[n-MaxJournalSteps:]...)
	}
}

// Finish marks the journal's last step done, or failed with err.
func (j *Journal) Finish(err error) bool {
	if len(j.Steps) == 0 {
		return false
	}
	last := &j.Steps[len(j.Steps)-1]
	last.Finished = time.Now().UTC()
	last.State = StepDone
	if err != nil {
		last.State = StepFailed
		last.Error = CapText(err.Error())
	}
	return true
}

// Failure counts the consecutive failures of one step run with the same
// inputs: the same step failing the same way again is not retried forever.
type Failure struct {
	// Step is the step as the journal details it.
	Step string `json:"step"`
	// Inputs identifies what the step was run with (a hash of the desired
	// state); other inputs start the count again.
	Inputs string    `json:"inputs"`
	Count  int       `json:"count"`
	Last   time.Time `json:"last"`
	Error  string    `json:"error,omitempty"` // the last error, capped
}

// Stall is a transition stopped until a person acts: no node is changed
// while it stands, until the desired state changes (a new revision, an
// edited cluster.yml) or `atrest resume` lifts it.
type Stall struct {
	// Reason is stable and CamelCase (RollbackFailed,
	// StepFailedRepeatedly): for alerts and scripts.
	Reason  string `json:"reason"`
	Message string `json:"message"` // what happened and what to do, capped
	// Step is the step that stalled, as the journal details it.
	Step     string    `json:"step,omitempty"`
	Inputs   string    `json:"inputs"`
	Revision string    `json:"revision,omitempty"`
	Since    time.Time `json:"since"`
}
