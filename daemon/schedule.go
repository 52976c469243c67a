package daemon

import (
	"math/rand/v2"
	"time"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/keystore"
)

// Rotation is where the rotation schedule stands.
type Rotation struct {
	// Due is the scheduled time of a rotation that should have happened by
	// now and has not (zero when none is due). It names the request, so a
	// rotation is served once however often it is asked for.
	Due time.Time
	// Next is the next scheduled rotation after the one due, or after the
	// last rotation when none is due (zero when there is no schedule).
	Next time.Time
}

// Request is the rotation request of a due rotation ("" when none is due).
func (r Rotation) Request() string {
	if r.Due.IsZero() {
		return ""
	}
	return "schedule:" + r.Due.UTC().Format(time.RFC3339)
}

// RotationAt says whether a scheduled rotation is due at now. The schedule
// counts from the last rotation, or from the primary key's creation when
// there has been none since: a rotation missed while atrest was down (or
// while another transition held the lock) is due at once, and only one is
// due however many were missed. Only managed keys rotate.
func RotationAt(p *cluster.Policy, mode cluster.Mode, keys []keystore.KeyInfo, last time.Time, now time.Time) Rotation {
	if p == nil || mode != cluster.Managed {
		return Rotation{}
	}
	base := last
	for _, k := range keys {
		if k.Role == keystore.RolePrimary && k.Created.After(base) {
			base = k.Created
		}
	}
	if base.IsZero() {
		// No managed key yet: enabling creates one, and the schedule starts
		// from it.
		return Rotation{}
	}
	next, ok := p.Next(base)
	if !ok {
		return Rotation{}
	}
	if next.After(now) {
		return Rotation{Next: next}
	}
	after, _ := p.Next(now)
	return Rotation{Due: next, Next: after}
}

// Backoff is the wait before the next cycle after failures consecutive
// failed reconciles: the interval when there are none, otherwise doubling
// from a quarter of it, capped at max.
func Backoff(interval, max time.Duration, failures int) time.Duration {
	if failures <= 0 {
		return interval
	}
	d := interval / 4
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// jitter spreads d by up to a tenth either way, so that daemons of many
// clusters polling one Git server do not poll in step.
func jitter(d time.Duration, r *rand.Rand) time.Duration {
	spread := int64(d / 10)
	if spread <= 0 {
		return d
	}
	return d + time.Duration(r.Int64N(2*spread+1)-spread)
}
