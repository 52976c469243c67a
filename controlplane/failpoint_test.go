package controlplane

import (
	"bytes"
	"io"
	"testing"
)

func TestMidStreamFailsHalfWay(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 101)
	var at []int
	m := &midStream{data: data}
	m.fail = func() { at = append(at, m.off) }
	got, err := io.ReadAll(m)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if len(at) != 1 || at[0] != 50 {
		t.Errorf("failpoint called at %v, want once at 50", at)
	}
}
