package keystore

import (
	"errors"
	"strings"
	"testing"
)

func TestCapText(t *testing.T) {
	short := "deploy failed"
	if CapText(short) != short {
		t.Error("a short error was changed")
	}
	long := "HEAD" + strings.Repeat("x", 10*MaxErrorText) + "TAIL"
	got := CapText(long)
	if len(got) > MaxErrorText || !strings.HasPrefix(got, "HEAD") || !strings.HasSuffix(got, "TAIL") || !strings.Contains(got, "bytes cut") {
		t.Errorf("capped to %d bytes: %.80q ... %.80q", len(got), got, got[len(got)-80:])
	}
}

func TestJournalAppend(t *testing.T) {
	j := NewJournal("enable", "r1", "")
	deploy := JournalStep{Name: "deploy", Detail: "deploy [k, identity]", State: StepRunning}
	for range 5 {
		j.Append(deploy)
		j.Finish(errors.New(strings.Repeat("log line\n", 2000)))
	}
	if len(j.Steps) != 1 || j.Steps[0].Attempts != 5 || len(j.Steps[0].Error) > MaxErrorText {
		t.Fatalf("a step failing 5 times: %d entries, %d attempts, %d bytes of error", len(j.Steps), j.Steps[0].Attempts, len(j.Steps[0].Error))
	}
	// A step that succeeds after failing starts no merge with the next.
	j.Append(deploy)
	j.Finish(nil)
	j.Append(deploy)
	if len(j.Steps) != 2 || j.Steps[0].State != StepDone || j.Steps[0].Attempts != 6 || j.Steps[1].Attempts != 1 {
		t.Fatalf("after success: %+v", j.Steps)
	}
	for i := range 3 * MaxJournalSteps {
		j.Append(JournalStep{Name: "step", Detail: strings.Repeat("d", i%7), State: StepDone})
	}
	if len(j.Steps) != MaxJournalSteps {
		t.Fatalf("%d journal steps kept, want %d", len(j.Steps), MaxJournalSteps)
	}
}
