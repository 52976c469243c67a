package daemon

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestWebhookAcceptsADeliveryOnce(t *testing.T) {
	secret := []byte("0123456789abcdef-shared")
	d := newTestDaemon(t)
	send := func(body, delivery string) (int, bool) {
		req := httptest.NewRequest("POST", "/hook", strings.NewReader(body))
		req.Header.Set(HeaderGitHubSignature, Sign(secret, []byte(body)))
		if delivery != "" {
			req.Header.Set("X-GitHub-Delivery", delivery)
		}
		rec := httptest.NewRecorder()
		d.WebhookHandler().ServeHTTP(rec, req)
		polled := len(d.pollNow) == 1
		if polled {
			<-d.pollNow
		}
		return rec.Code, polled
	}
	for _, tt := range []struct {
		name, body, delivery string
		code                 int
		polls                bool
	}{
		{"a push", `{"after":"1111"}`, "d-1", http.StatusAccepted, true},
		{"the same push again (a replay)", `{"after":"1111"}`, "d-9", http.StatusOK, false},
		{"the same delivery id, another body", `{"after":"2222"}`, "d-1", http.StatusOK, false},
		{"the next push", `{"after":"3333"}`, "d-2", http.StatusAccepted, true},
		{"a push without a delivery id", `{"after":"4444"}`, "", http.StatusAccepted, true},
	} {
		code, polled := send(tt.body, tt.delivery)
		if code != tt.code || polled != tt.polls {
			t.Errorf("%s: %d, polled %v; want %d, %v", tt.name, code, polled, tt.code, tt.polls)
		}
	}
	if m := scrape(t, d); !strings.Contains(m, `atrest_webhook_requests_total{result="repeated"} 2`) {
		t.Errorf("metrics:\n%s", grep(m, "webhook"))
	}
}

func TestDeliveriesWindowAndBound(t *testing.T) {
	var s deliveries
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	if !s.first(t0, "a") || s.first(t0.Add(time.Hour), "a") {
		t.Fatal("a repeat within the window was accepted")
	}
	if !s.first(t0.Add(deliveryWindow+time.Second), "a") {
		t.Error("a delivery past the window was refused")
	}
	for i := range maxDeliveries + 10 {
		s.first(t0.Add(deliveryWindow+time.Duration(i+2)*time.Second), fmt.Sprint("id-", i))
	}
	if n := len(s.seen); n > maxDeliveries {
		t.Errorf("%d deliveries remembered, want at most %d", n, maxDeliveries)
	}
}

func TestWebhookBusy(t *testing.T) {
	d := newTestDaemon(t)
	for range maxWebhookInFlight {
		d.webhookSlots <- struct{}{}
	}
	body := []byte(`{"after":"1111"}`)
	req := httptest.NewRequest("POST", "/hook", bytes.NewReader(body))
	req.Header.Set(HeaderGitHubSignature, Sign([]byte("0123456789abcdef-shared"), body))
	rec := httptest.NewRecorder()
	d.WebhookHandler().ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" || len(d.pollNow) != 0 {
		t.Errorf("with every slot taken: %d, Retry-After %q, polls %d", rec.Code, rec.Header().Get("Retry-After"), len(d.pollNow))
	}
}

func grep(s, sub string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// BenchmarkWebhookFlood measures the peak heap and RSS of the webhook under 200
// concurrent 1 MiB requests that are not signed by the shared secret (half
// with no signature, half with a well-formed wrong one), on a loopback
// server, beside the handler this replaced, which read the whole body
// before it checked the signature:
//
//	go test -run '^$' -bench WebhookFlood -benchtime 1x ./daemon/
func BenchmarkWebhookFlood(b *testing.B) {
	secret := []byte("0123456789abcdef-shared")
	for _, h := range []struct {
		name    string
		handler func(*Daemon) http.Handler
	}{
		{"buffered (before)", func(*Daemon) http.Handler { return bufferedWebhook(secret) }},
		{"streamed", func(d *Daemon) http.Handler { return d.WebhookHandler() }},
	} {
		b.Run(h.name, func(b *testing.B) {
			for range b.N {
				d := newTestDaemon(b)
				srv := httptest.NewServer(h.handler(d))
				rssBase := resetPeakRSS(b)
				peak, refused, took := flood(b, srv.URL, 200, 1<<20)
				rss := procStatusKiB(b, "VmHWM") - rssBase
				srv.Close()
				b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
				b.ReportMetric(float64(rss)/1024, "peak-RSS-growth-MiB")
				b.ReportMetric(float64(refused), "refused")
				b.Logf("%s: peak heap %.1f MiB, peak RSS %.1f MiB above the %.1f MiB before, %d of 200 refused, %s",
					h.name, float64(peak)/(1<<20), float64(rss)/1024, float64(rssBase)/1024, refused, took.Round(time.Millisecond))
			}
		})
	}
}

// resetPeakRSS resets the process's peak resident set (VmHWM) to what it
// holds now, and returns that: the flood's peak RSS is measured from it.
// The clients run in the same process but stream their bodies from a
// generator, so what grows is the server's.
func resetPeakRSS(b *testing.B) int64 {
	runtime.GC()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Skipf("cannot reset the peak RSS (/proc/self/clear_refs): %v", err)
	}
	return procStatusKiB(b, "VmRSS")
}

// procStatusKiB reads a kB field of /proc/self/status.
func procStatusKiB(b *testing.B, field string) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatalf("/proc/self/status has no %s", field)
	return 0
}

// bufferedWebhook is the webhook as it was: the body read whole, then the
// signature checked. For the benchmark's baseline only.
func bufferedWebhook(secret []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWebhookBody))
		if err != nil {
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
			return
		}
		want, err := signature(r.Header)
		mac := hmac.New(sha256.New, secret)
		mac.Write(body)
		if err != nil || !hmac.Equal(want, mac.Sum(nil)) {
			http.Error(w, "refused", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
}

// flood sends n concurrent requests of size bytes each (streamed from a
// generator, so the client holds no bodies) and samples the heap in use
// until they are all answered; it returns the peak, how many were refused
// and how long it took.
func flood(b *testing.B, url string, n, size int) (peak uint64, refused int64, took time.Duration) {
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	done := make(chan struct{})
	var sampled sync.WaitGroup
	var max atomic.Uint64
	sampled.Go(func() {
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > base.HeapInuse && m.HeapInuse-base.HeapInuse > max.Load() {
				max.Store(m.HeapInuse - base.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	start := time.Now()
	var wg sync.WaitGroup
	var refusedN atomic.Int64
	for i := range n {
		wg.Go(func() {
			req, err := http.NewRequest("POST", url, io.LimitReader(zeros{}, int64(size)))
			if err != nil {
				b.Error(err)
				return
			}
			req.ContentLength = int64(size)
			if i%2 == 1 {
				req.Header.Set(HeaderGitHubSignature, "sha256="+strings.Repeat("ab", 32))
			}
			resp, err := client.Do(req)
			if err != nil {
				// The server answered and closed before the body was sent.
				if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "broken pipe") {
					b.Logf("request %d: %v", i, err)
				}
				refusedN.Add(1)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				refusedN.Add(1)
			}
		})
	}
	wg.Wait()
	took = time.Since(start)
	close(done)
	sampled.Wait()
	client.CloseIdleConnections()
	return max.Load(), refusedN.Load(), took
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
