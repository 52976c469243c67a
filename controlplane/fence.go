package controlplane

import (
	"context"
	"fmt"
	"math"
	"slices"
)

// Fence ties what atrest does on the nodes to the reconciler's lock, so
// that a holder that lost the lock (paused, partitioned) cannot undo what
// the new holder did.
//
// The reconciler sets Token from its lock acquisition: a new lock holder
// always has a greater token. Every provider-file write records the token
// on the node (in .atrest-fence beside the file) and is refused, with an
// error wrapping ErrFenced, when the node has seen a greater one. Check,
// when set, says whether the lock is still held: it is called before
// every destructive Docker call (stop, rename, remove, start, restart)
// and every file write or removal on a node, and its error stops the
// operation there, rollbacks included: the node is left to the new
// holder's Cluster.Recover.
type Fence struct {
	// Token is the lock acquisition's number; 0 records and checks
	// nothing on the nodes. At most math.MaxInt64, which the nodes'
	// shells can compare.
	Token uint64
	// Check returns an error once the lock is lost; nil checks nothing.
	Check func() error
}

type fenceKey struct{}

// WithFence returns a context that carries f to every operation run with
// it. Without one, writes carry token 0 and nothing is checked.
func WithFence(ctx context.Context, f Fence) context.Context {
	return context.WithValue(ctx, fenceKey{}, f)
}

func fenceFrom(ctx context.Context) Fence {
	f, _ := ctx.Value(fenceKey{}).(Fence)
	return f
}

// checkFence asks the context's Fence whether the lock is still held,
// before what; the error wraps ErrFenced.
func checkFence(ctx context.Context, what string) error {
	f := fenceFrom(ctx)
	if f.Check == nil {
		return nil
	}
	if err := f.Check(); err != nil {
		return fmt.Errorf("%w: not going to %s: %w", ErrFenced, what, err)
	}
	return nil
}

// fenceToken is the context's token, refused when the nodes' shells could
// not compare it.
func fenceToken(ctx context.Context) (uint64, error) {
	t := fenceFrom(ctx).Token
	if t > math.MaxInt64 {
		return 0, fmt.Errorf("fence token %d is larger than %d", t, int64(math.MaxInt64))
	}
	return t, nil
}

type unsyncedKey struct{}

// AllowUnsynced returns a context under which the named nodes may be
// changed while their /readyz fails only on informer-sync (NodeState.
// Unsynced): the reconciler allows it for the change that gives them the
// key they lack to read what etcd stores, the one change that makes them
// ready again. Every other failed readiness still refuses the change.
func AllowUnsynced(ctx context.Context, nodes ...string) context.Context {
	return context.WithValue(ctx, unsyncedKey{}, slices.Clone(nodes))
}

func unsyncedAllowed(ctx context.Context, node string) bool {
	nodes, _ := ctx.Value(unsyncedKey{}).([]string)
	return slices.Contains(nodes, node)
}
