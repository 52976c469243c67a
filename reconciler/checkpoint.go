package reconciler

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/atrest-io/atrest/keystore"
)

// checkpointEvery bounds how often the rewrite's checkpoint is written to
// the journal: each write is a Vault round trip.
const checkpointEvery = 5 * time.Second

// rewrite runs a rewrite step from the journal's checkpoint, when it has
// one for this very step, and keeps the checkpoint current as it goes.
func (r *Reconciler) rewrite(ctx context.Context, step Step) error {
	kr, err := r.Keys.Keyring(ctx)
	if err != nil {
		return err
	}
	detail := step.String()
	start, from := 0, ""
	if kr.Journal != nil && kr.Journal.Checkpoint != nil && kr.Journal.Checkpoint.Step == detail {
		cp := kr.Journal.Checkpoint
		if i := slices.Index(step.Resources, cp.Resource); i >= 0 {
			start, from = i, cp.Continue
			r.logger().Info("rewrite resumes from its checkpoint", "resource", cp.Resource, "checkpoint_at", cp.At, "done_before", step.Resources[:i])
		}
	}
	for i := start; i < len(step.Resources); i++ {
		res := step.Resources[i]
		cp := &checkpointer{r: r, step: detail, resource: res}
		if i > start {
			from = ""
			cp.write(ctx, "") // the resources before are done
		}
		_, err := r.Rewriter.RewriteFrom(ctx, res, from, func(cont string) { cp.advance(ctx, cont) })
		if err != nil {
			return err
		}
	}
	return nil
}

// checkpointer writes a rewrite's checkpoint into the journal, at most
// every checkpointEvery.
type checkpointer struct {
	r              *Reconciler
	step, resource string
	mu             sync.Mutex
	last           time.Time
}

func (c *checkpointer) advance(ctx context.Context, cont string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.last) < checkpointEvery {
		return
	}
	c.last = time.Now()
	c.write(ctx, cont)
}

// write records the checkpoint. A failure only costs how far a resumed
// rewrite starts back, so it is logged, not returned.
func (c *checkpointer) write(ctx context.Context, cont string) {
	for range 2 {
		kr, err := c.r.Keys.Keyring(ctx)
		if err != nil || kr.Journal == nil {
			break
		}
		kr.Journal.Checkpoint = &keystore.RewriteCheckpoint{Step: c.step, Resource: c.resource, Continue: cont, At: time.Now().UTC()}
		err = c.r.Keys.UpdateKeyring(ctx, kr)
		if err == nil {
			return
		}
		if !errors.Is(err, keystore.ErrConflict) {
			c.r.logger().Warn("write the rewrite's checkpoint", "err", err)
			return
		}
	}
}
