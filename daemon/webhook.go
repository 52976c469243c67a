package daemon

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Signature headers the webhook accepts: GitHub's (and Gitea's, Forgejo's
// compatible one), and a generic one for any other sender. Both carry
// "sha256=" and the hex HMAC-SHA256 of the raw body with the shared secret.
const (
	HeaderGitHubSignature  = "X-Hub-Signature-256"
	HeaderGenericSignature = "X-Atrest-Signature"
)

// maxWebhookBody bounds what the webhook reads: push payloads are small.
// The body is never kept: it streams through the MAC.
const maxWebhookBody = 1 << 20

// maxWebhookInFlight bounds the webhook requests being read at once; more
// are answered 503 at once, so that a flood holds a few MACs and
// connections, not bodies or goroutines waiting in line.
const maxWebhookInFlight = 8

// A delivery is accepted once: its signature (the MAC of its body) and its
// delivery id are remembered for deliveryWindow, at most maxDeliveries of
// them, and a repeat of either is answered without a poll.
const (
	deliveryWindow = 24 * time.Hour
	maxDeliveries  = 4096
)

// Delivery id headers: GitHub's, Gitea's and Forgejo's, and a generic one.
var deliveryHeaders = []string{"X-GitHub-Delivery", "X-Gitea-Delivery", "X-Forgejo-Delivery", "X-Atrest-Delivery"}

// errNoSignature and errBadSignature are the two refusals.
var (
	errNoSignature  = errors.New("no signature header")
	errBadSignature = errors.New("signature does not match")
)

// Sign returns the signature header value of body with secret, as senders
// compute it.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// signature returns the MAC the request claims for its body.
func signature(h http.Header) ([]byte, error) {
	sig := h.Get(HeaderGitHubSignature)
	if sig == "" {
		sig = h.Get(HeaderGenericSignature)
	}
	if sig == "" {
		return nil, errNoSignature
	}
	hexSum, ok := strings.CutPrefix(sig, "sha256=")
	if !ok {
		return nil, errBadSignature
	}
	got, err := hex.DecodeString(hexSum)
	if err != nil || len(got) != sha256.Size {
		return nil, errBadSignature
	}
	return got, nil
}

// errTooLarge: the body is over maxWebhookBody.
var errTooLarge = errors.New("body unreadable or larger than 1 MiB")

// verifyBody streams body through the HMAC with secret and compares it,
// in constant time, with the signature the header claims. Nothing of the
// body is kept. It returns the signature, which identifies the delivery.
func verifyBody(h http.Header, secret []byte, body io.Reader) ([]byte, error) {
	want, err := signature(h)
	if err != nil {
		return nil, err
	}
	mac := hmac.New(sha256.New, secret)
	if _, err := io.Copy(mac, body); err != nil {
		return nil, errTooLarge
	}
	if !hmac.Equal(want, mac.Sum(nil)) {
		return nil, errBadSignature
	}
	return want, nil
}

// deliveries remembers the deliveries accepted lately.
type deliveries struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

// first records the delivery by its ids and reports whether none of them
// was seen within deliveryWindow of now.
func (s *deliveries) first(now time.Time, ids ...string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]time.Time{}
	}
	for id, at := range s.seen {
		if now.Sub(at) > deliveryWindow {
			delete(s.seen, id)
		}
	}
	repeat := false
	for _, id := range ids {
		if at, ok := s.seen[id]; ok && now.Sub(at) <= deliveryWindow {
			repeat = true
		}
	}
	if repeat {
		return false
	}
	for _, id := range ids {
		for len(s.seen) >= maxDeliveries {
			s.dropOldest()
		}
		s.seen[id] = now
	}
	return true
}

func (s *deliveries) dropOldest() {
	var oldest string
	var at time.Time
	for id, t := range s.seen {
		if oldest == "" || t.Before(at) {
			oldest, at = id, t
		}
	}
	delete(s.seen, oldest)
}

// webhookHandler authenticates a push notification and triggers a poll.
// It answers before the poll runs: senders time out within seconds, and the
// poll's outcome shows in the metrics and the status.
func (d *Daemon) webhookHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			d.metrics.webhook.WithLabelValues("bad_request").Inc()
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "POST a push notification here", http.StatusMethodNotAllowed)
			return
		}
		select {
		case d.webhookSlots <- struct{}{}:
			defer func() { <-d.webhookSlots }()
		default:
			d.metrics.webhook.WithLabelValues("busy").Inc()
			w.Header().Set("Retry-After", "1")
			http.Error(w, "busy: too many webhook requests at once", http.StatusServiceUnavailable)
			return
		}
		sig, err := verifyBody(r.Header, d.cfg.WebhookSecret, http.MaxBytesReader(w, r.Body, maxWebhookBody))
		switch {
		case errors.Is(err, errTooLarge):
			d.metrics.webhook.WithLabelValues("bad_request").Inc()
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		case err != nil:
			result := "bad_signature"
			if errors.Is(err, errNoSignature) {
				result = "no_signature"
			}
			d.metrics.webhook.WithLabelValues(result).Inc()
			d.log.Warn("webhook refused", "reason", err.Error(), "remote", r.RemoteAddr)
			http.Error(w, "signature refused: sign the body with HMAC-SHA256 and the shared secret, in "+HeaderGitHubSignature+" or "+HeaderGenericSignature+" as sha256=<hex>", http.StatusUnauthorized)
			return
		}
		ids := []string{"signature:" + hex.EncodeToString(sig)}
		for _, h := range deliveryHeaders {
			if id := r.Header.Get(h); id != "" {
				ids = append(ids, "delivery:"+id)
			}
		}
		if !d.deliveries.first(time.Now(), ids...) {
			d.metrics.webhook.WithLabelValues("repeated").Inc()
			d.log.Info("webhook refused: a delivery already accepted", "remote", r.RemoteAddr, "event", r.Header.Get("X-GitHub-Event"))
			_, _ = io.WriteString(w, "already accepted: no new poll\n")
			return
		}
		d.metrics.webhook.WithLabelValues("accepted").Inc()
		d.log.Info("webhook accepted: polling the Git source now", "remote", r.RemoteAddr, "event", r.Header.Get("X-GitHub-Event"))
		d.trigger(d.pollNow)
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, "poll triggered\n")
	})
}
