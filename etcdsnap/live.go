package etcdsnap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// LiveCensus is a census kept current from etcd's watch: one full census
// of a resource (Census), then, from its revision on, every write and
// delete under the resource's storage path, each event's value saying how
// it is stored. Reading it costs nothing of etcd; what it reads from etcd
// grows with the writes, not with what is stored. A watch that etcd
// compacted past, or that broke, leaves its resource stale: the next read
// takes a full census again. It holds, per object, its etcd key and a
// small index into the few ways objects are stored: memory follows the
// number of objects, not their size.
//
// It is for observing. What a step's safety depends on (dropping a key,
// disabling, a verify) is decided from Client.Census, fresh and exact.
type LiveCensus struct {
	c        *Client
	registry string
	log      *slog.Logger
	ctx      context.Context
	stop     context.CancelFunc
	wg       sync.WaitGroup

	mu        sync.Mutex
	resources map[string]*liveResource
	labels    []label
	index     map[label]uint16
	// stats
	fulls, events, mismatches int64
}

// liveResource is one resource's objects, by etcd key.
type liveResource struct {
	path    string
	objects map[string]uint16 // etcd key -> index into labels
	rev     int64             // the revision the objects are current to
	stale   bool              // the watch ended: a full census is needed
	cancel  context.CancelFunc
}

// NewLiveCensus starts an empty live census of the resources stored under
// registry (kube-apiserver's --etcd-prefix; "" for Config.RegistryPrefix).
// Close it to end its watches.
func (c *Client) NewLiveCensus(registry string) *LiveCensus {
	if registry == "" {
		registry = c.cfg.RegistryPrefix
	}
	ctx, stop := context.WithCancel(context.Background())
	return &LiveCensus{c: c, registry: registry, log: c.log.With("component", "live-census"), ctx: ctx, stop: stop,
		resources: map[string]*liveResource{}, index: map[label]uint16{}}
}

// Registry is the --etcd-prefix the census counts under.
func (l *LiveCensus) Registry() string { return l.registry }

// Close ends every watch.
func (l *LiveCensus) Close() {
	l.stop()
	l.wg.Wait()
}

// LiveStats says what a live census has cost: full censuses taken, watch
// events applied, and cross-checks that found it wrong.
type LiveStats struct {
	Fulls, Events, Mismatches int64
}

// Stats is what the census has done so far.
func (l *LiveCensus) Stats() LiveStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return LiveStats{Fulls: l.fulls, Events: l.events, Mismatches: l.mismatches}
}

// Census counts resources as Client.CensusKeyIDs does, from what the
// watches keep: a resource seen for the first time, or stale, gets a full
// census first (and a watch from its revision on).
func (l *LiveCensus) Census(ctx context.Context, resources []string) (Census, KeyIDs, error) {
	for _, r := range resources {
		l.mu.Lock()
		lr := l.resources[r]
		fresh := lr != nil && !lr.stale
		l.mu.Unlock()
		if !fresh {
			if err := l.track(ctx, r); err != nil {
				return nil, nil, err
			}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out, ids := Census{}, KeyIDs{}
	for _, r := range resources {
		counts := map[string]int64{}
		for _, i := range l.resources[r].objects {
			lb := l.labels[i]
			counts[lb.prefix]++
			if lb.keyID != "" {
				if ids[r] == nil {
					ids[r] = map[string]map[string]int64{}
				}
				if ids[r][lb.prefix] == nil {
					ids[r][lb.prefix] = map[string]int64{}
				}
				ids[r][lb.prefix][lb.keyID]++
			}
		}
		out[r] = counts
	}
	return out, ids, nil
}

// track takes a full census of resource r, by key, and watches its path
// from that revision on.
func (l *LiveCensus) track(ctx context.Context, r string) error {
	path, err := StoragePath(l.registry, r)
	if err != nil {
		return err
	}
	objects, rev, err := l.full(ctx, r, path, 0)
	if err != nil {
		return err
	}
	l.mu.Lock()
	if old := l.resources[r]; old != nil && old.cancel != nil {
		old.cancel()
	}
	wctx, cancel := context.WithCancel(l.ctx)
	lr := &liveResource{path: path, objects: objects, rev: rev, cancel: cancel}
	l.resources[r] = lr
	l.fulls++
	l.mu.Unlock()
	wch := l.c.cli.Watch(clientv3.WithRequireLeader(wctx), path, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
	l.wg.Go(func() { l.follow(r, lr, wch) })
	l.log.Debug("live census started", "resource", r, "objects", len(objects), "revision", rev)
	return nil
}

// full reads every object of r under path at rev (0: now), by key.
func (l *LiveCensus) full(ctx context.Context, r, path string, rev int64) (map[string]uint16, int64, error) {
	var objects map[string]uint16
	var err error
	l.c.fulls.Add(1)
	for attempt := 0; ; attempt++ {
		objects = map[string]uint16{}
		var got int64
		got, _, err = l.c.scan(ctx, path, rev, DefaultPageSize, l.c.pageBytes(), func(key, value []byte) {
			lb := labelOf(value)
			l.mu.Lock()
			i := l.labelIndex(lb)
			l.mu.Unlock()
			objects[string(key)] = i
		})
		if errors.Is(err, rpctypes.ErrCompacted) && rev == 0 && attempt < censusRetries {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("census of %s (%s): %w", r, path, err)
		}
		return objects, got, nil
	}
}

// labelIndex is lb's index, added when new; l.mu is held.
func (l *LiveCensus) labelIndex(lb label) uint16 {
	if i, ok := l.index[lb]; ok {
		return i
	}
	i := uint16(len(l.labels))
	l.labels = append(l.labels, lb)
	l.index[lb] = i
	return i
}

// follow applies r's watch events until the watch ends: then r is stale,
// and the next read takes a full census.
func (l *LiveCensus) follow(r string, lr *liveResource, wch clientv3.WatchChan) {
	for wr := range wch {
		if err := wr.Err(); err != nil {
			l.mu.Lock()
			lr.stale = true
			l.mu.Unlock()
			if wr.CompactRevision != 0 {
				l.log.Info("etcd compacted past the live census's watch: the next observation takes a full census", "resource", r, "compacted", wr.CompactRevision)
			} else if l.ctx.Err() == nil {
				l.log.Warn("the live census's watch ended: the next observation takes a full census", "resource", r, "err", err)
			}
			lr.cancel()
			return
		}
		l.mu.Lock()
		for _, ev := range wr.Events {
			switch ev.Type {
			case mvccpb.PUT:
				lr.objects[string(ev.Kv.Key)] = l.labelIndex(labelOf(ev.Kv.Value))
			case mvccpb.DELETE:
				delete(lr.objects, string(ev.Kv.Key))
			}
			l.events++
		}
		// Current to the last event applied; to the header's revision
		// only on a progress notification, which says every event up to
		// it was sent (a catching-up watch's header may run ahead).
		switch {
		case len(wr.Events) > 0:
			lr.rev = max(lr.rev, wr.Events[len(wr.Events)-1].Kv.ModRevision)
		case wr.IsProgressNotify():
			lr.rev = max(lr.rev, wr.Header.Revision)
		}
		l.mu.Unlock()
	}
	// The channel closed without an error: Close, or the watch gone.
	l.mu.Lock()
	lr.stale = true
	l.mu.Unlock()
}

// CrossCheck compares each resource's live census with a full census of
// etcd taken at the revision the live one is current to: exactly the
// same objects, stored the same way. A resource that differs is put
// right (its full census replaces it) and counted; the difference is
// logged by count, never by content. It returns how many objects were
// wrong.
func (l *LiveCensus) CrossCheck(ctx context.Context) (int, error) {
	l.mu.Lock()
	names := make([]string, 0, len(l.resources))
	for r := range l.resources {
		names = append(names, r)
	}
	l.mu.Unlock()
	slices.Sort(names)
	wrong := 0
	for _, r := range names {
		l.mu.Lock()
		lr := l.resources[r]
		if lr == nil || lr.stale {
			l.mu.Unlock()
			continue
		}
		rev := lr.rev
		live := make(map[string]uint16, len(lr.objects))
		for k, v := range lr.objects {
			live[k] = v
		}
		l.mu.Unlock()
		start := time.Now()
		full, _, err := l.full(ctx, r, lr.path, rev)
		if errors.Is(err, rpctypes.ErrCompacted) {
			continue // the watch will say so, and a full census follow
		}
		if err != nil {
			return wrong, err
		}
		diff := 0
		for k, v := range full {
			if lv, ok := live[k]; !ok || lv != v {
				diff++
			}
		}
		for k := range live {
			if _, ok := full[k]; !ok {
				diff++
			}
		}
		if diff == 0 {
			l.log.Debug("live census cross-checked", "resource", r, "revision", rev, "objects", len(full), "took", time.Since(start).Round(time.Millisecond))
			continue
		}
		wrong += diff
		l.log.Warn("the live census disagreed with a full census: corrected", "resource", r, "revision", rev, "objects", len(full), "wrong", diff)
		l.mu.Lock()
		l.mismatches += int64(diff)
		// Events after rev are applied again on top: the watch
		// replays nothing, so mark it stale for a clean start instead.
		lr.stale = true
		l.mu.Unlock()
	}
	return wrong, nil
}
