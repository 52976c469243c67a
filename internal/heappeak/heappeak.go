// Package heappeak measures the Go heap a piece of work needs, for the
// benchmarks that print it.
package heappeak

import (
	"runtime"
	"sync"
	"time"
)

// Measure runs f and returns the heap in use before it and the most in
// use while it ran, sampled every 5 ms. Before is taken after two
// collections: gRPC keeps received buffers in pools that one collection
// only moves to the victim cache.
func Measure(f func()) (before, peak uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before, peak = ms.HeapInuse, ms.HeapInuse
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			mu.Lock()
			peak = max(peak, ms.HeapInuse)
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	f()
	close(stop)
	wg.Wait()
	return before, peak
}
