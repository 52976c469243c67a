package etcdsnap

import (
	"context"
	"log/slog"
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/atrest-io/atrest/cluster"
)

// TestLiveFollow is the live census's bookkeeping of watch events: a put
// labels its key by how its value is stored, a delete forgets it, the
// census is current to the last event (or a progress notification), and
// a compacted or broken watch leaves the resource stale, for a full
// census at the next read.
func TestLiveFollow(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	l := &LiveCensus{log: slog.New(slog.DiscardHandler), ctx: ctx, stop: stop, resources: map[string]*liveResource{}, index: map[label]uint16{}}
	_, cancel := context.WithCancel(ctx)
	lr := &liveResource{objects: map[string]uint16{"/registry/secrets/a/old": l.labelIndex(label{prefix: cluster.PrefixIdentity})}, rev: 10, cancel: cancel}
	l.resources["secrets"] = lr
	wch := make(chan clientv3.WatchResponse, 4)
	put := func(key string, rev int64, value string) *clientv3.Event {
		return &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), ModRevision: rev}}
	}
	wch <- clientv3.WatchResponse{Header: &etcdserverpb.ResponseHeader{Revision: 13}, Events: []*clientv3.Event{
		put("/registry/secrets/a/x", 11, "k8s:enc:aescbc:v1:k1:xxxx"),
		put("/registry/secrets/a/y", 12, "k8s\x00plain"),
		{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte("/registry/secrets/a/old"), ModRevision: 12}},
	}}
	wch <- clientv3.WatchResponse{Header: &etcdserverpb.ResponseHeader{Revision: 20}} // progress
	wch <- clientv3.WatchResponse{CompactRevision: 15}
	close(wch)
	l.follow("secrets", lr, wch)

	counts := map[string]int{}
	for _, i := range lr.objects {
		counts[l.labels[i].prefix]++
	}
	if len(lr.objects) != 2 || counts["aescbc:v1:k1"] != 1 || counts[cluster.PrefixIdentity] != 1 {
		t.Errorf("objects after the events: %v (%v)", lr.objects, counts)
	}
	if lr.rev != 20 || !lr.stale || l.events != 3 {
		t.Errorf("rev %d, stale %v, events %d: want 20, stale after the compaction, 3 events", lr.rev, lr.stale, l.events)
	}
}
