package daemon

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strings"
)

// Signature headers the webhook accepts: GitHub's (and Gitea's, Forgejo's
// compatible one), and a generic one for any other sender. Both carry
// "sha256=" and the hex HMAC-SHA256 of the raw body with the shared secret.
const (
	HeaderGitHubSignature  = "X-Hub-Signature-256"
	HeaderGenericSignature = "X-Atrest-Signature"
)

// maxWebhookBody bounds what the webhook reads: push payloads are small,
// and the body is read before it can be authenticated.
const maxWebhookBody = 1 << 20

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

// verifySignature checks the request's signature of body against secret,
// in constant time.
func verifySignature(h http.Header, secret, body []byte) error {
	sig := h.Get(HeaderGitHubSignature)
	if sig == "" {
		sig = h.Get(HeaderGenericSignature)
	}
	if sig == "" {
		return errNoSignature
	}
	hexSum, ok := strings.CutPrefix(sig, "sha256=")
	if !ok {
		return errBadSignature
	}
	got, err := hex.DecodeString(hexSum)
	if err != nil {
		return errBadSignature
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return errBadSignature
	}
	return nil
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
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWebhookBody))
		if err != nil {
			d.metrics.webhook.WithLabelValues("bad_request").Inc()
			http.Error(w, "body unreadable or larger than 1 MiB", http.StatusRequestEntityTooLarge)
			return
		}
		if err := verifySignature(r.Header, d.cfg.WebhookSecret, body); err != nil {
			result := "bad_signature"
			if errors.Is(err, errNoSignature) {
				result = "no_signature"
			}
			d.metrics.webhook.WithLabelValues(result).Inc()
			d.log.Warn("webhook refused", "reason", err.Error(), "remote", r.RemoteAddr)
			http.Error(w, "signature refused: sign the body with HMAC-SHA256 and the shared secret, in "+HeaderGitHubSignature+" or "+HeaderGenericSignature+" as sha256=<hex>", http.StatusUnauthorized)
			return
		}
		d.metrics.webhook.WithLabelValues("accepted").Inc()
		d.log.Info("webhook accepted: polling the Git source now", "remote", r.RemoteAddr, "event", r.Header.Get("X-GitHub-Event"))
		d.trigger(d.pollNow)
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, "poll triggered\n")
	})
}
