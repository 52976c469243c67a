package heappeak

import "testing"

// TestMeasure: a 64 MiB allocation held while f runs shows in the peak,
// above what was in use before.
func TestMeasure(t *testing.T) {
	var keep []byte
	before, peak := Measure(func() {
		keep = make([]byte, 64<<20)
		for i := range keep {
			keep[i] = 1
		}
	})
	if peak < before+60<<20 {
		t.Errorf("before %d, peak %d: want the 64 MiB allocation in the peak", before, peak)
	}
	_ = keep
}
