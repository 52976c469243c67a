package etcdsnap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
)

// Defaults for the zero values of Config.
const (
	DefaultDialTimeout         = 10 * time.Second
	DefaultRequestTimeout      = 30 * time.Second
	DefaultSnapshotIdleTimeout = time.Minute
	DefaultRegistryPrefix      = "/registry"
)

// Config says how to reach etcd. RKE's etcd wants a client certificate
// signed by the cluster CA (kube-node.pem works, as for kube-apiserver).
type Config struct {
	// Endpoints are etcd client URLs (https://10.0.0.1:2379). Save takes
	// its snapshot from one of them: the first that answers.
	Endpoints []string
	// CAFile verifies etcd; CertFile and KeyFile are the client certificate.
	CAFile, CertFile, KeyFile string
	// InsecureAllowHTTP admits http:// endpoints, plaintext and
	// unauthenticated (etcd.insecureAllowHTTP); without it Dial refuses one.
	InsecureAllowHTTP bool
	// DialTimeout bounds connecting and the first status call to a member
	// (default DefaultDialTimeout).
	DialTimeout time.Duration
	// RequestTimeout bounds each unary call: one status, one census page,
	// one get (default DefaultRequestTimeout).
	RequestTimeout time.Duration
	// SnapshotIdleTimeout aborts a snapshot stream that delivers nothing for
	// this long (default DefaultSnapshotIdleTimeout). A snapshot of any size
	// may take as long as it needs while bytes keep arriving.
	SnapshotIdleTimeout time.Duration
	// RegistryPrefix is kube-apiserver's --etcd-prefix (default "/registry").
	RegistryPrefix string
	// PageBytes bounds the values one census page holds (default
	// DefaultPageBytes).
	PageBytes int64
	// Logger receives progress and the etcd client's warnings (default:
	// slog.Default()).
	Logger *slog.Logger
}

// Client is a connection to etcd for snapshots, the census and raw reads.
type Client struct {
	cfg  Config
	tls  *tls.Config
	cli  *clientv3.Client
	log  *slog.Logger
	read *readCounter
	// fulls counts full censuses of a resource: every stored value read.
	fulls atomic.Int64
}

// FullCensuses is how many times the client read every stored value of a
// resource (a census, the start of a live census, a cross-check).
func (c *Client) FullCensuses() int64 { return c.fulls.Load() }

// ReadBytes is what the client has read from etcd so far: the bytes of
// snapshot streams, and of everything else (census pages, watch events,
// gets), as gRPC delivered them.
func (c *Client) ReadBytes() (snapshot, other int64) {
	return c.read.snapshot.Load(), c.read.other.Load()
}

// Dial connects to etcd and checks that at least one endpoint answers a
// status call within the dial timeout. Close the client when done.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	read := &readCounter{}
	cli, err := newEtcdClient(cfg, tlsCfg, cfg.Endpoints, read)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	for _, ep := range cfg.Endpoints {
		if u, _ := url.Parse(ep); u.Scheme == "http" {
			cfg.Logger.Warn("INSECURE: etcd is reached in plaintext: anyone who can see the traffic gets every snapshot and every object read, and anyone on the path can pose as etcd",
				"endpoint", ep, "setting", "etcd.insecureAllowHTTP")
		}
	}
	c := &Client{cfg: cfg, tls: tlsCfg, cli: cli, log: cfg.Logger, read: read}
	if _, err := c.member(ctx, cfg.DialTimeout); err != nil {
		cli.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.cli.Close() }

func (cfg *Config) defaults() error {
	if len(cfg.Endpoints) == 0 {
		return errors.New("etcd: no endpoints: set etcd.endpoints to the etcd client URLs (https://HOST:2379)")
	}
	https := false
	for _, ep := range cfg.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("etcd endpoint %q: not an http(s)://HOST:PORT URL", ep)
		}
		https = https || u.Scheme == "https"
		if u.Scheme == "http" && !cfg.InsecureAllowHTTP {
			return fmt.Errorf("etcd endpoint %q is plaintext: snapshots and every object read from etcd would cross the network unencrypted; use https:// with etcd.caFile, or, DANGEROUS, allow it with etcd.insecureAllowHTTP", ep)
		}
	}
	if https && cfg.CAFile == "" {
		return errors.New("etcd: https endpoints need a CA file (etcd.caFile) to verify etcd")
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return errors.New("etcd: a client certificate needs both etcd.certFile and etcd.keyFile")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.SnapshotIdleTimeout <= 0 {
		cfg.SnapshotIdleTimeout = DefaultSnapshotIdleTimeout
	}
	if cfg.RegistryPrefix == "" {
		cfg.RegistryPrefix = DefaultRegistryPrefix
	}
	cfg.RegistryPrefix = "/" + strings.Trim(cfg.RegistryPrefix, "/")
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return nil
}

func (cfg *Config) tlsConfig() (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" {
		return nil, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA file: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s: no PEM certificate in it", cfg.CAFile)
		}
	}
	if cfg.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			// The error names the files, never their content.
			return nil, fmt.Errorf("etcd client certificate %s / %s: %w", cfg.CertFile, cfg.KeyFile, err)
		}
		t.Certificates = []tls.Certificate{pair}
	}
	return t, nil
}

// snapshotCodec is gRPC's proto codec with one change: a message that
// arrives in several HTTP/2 frames is gathered into a buffer from a pool
// with a 64 KiB tier. etcd sends a snapshot as 32 KiB blobs, each message a
// few bytes over 32 KiB and so split in frames; the default codec gathers it
// into a 1 MiB buffer of gRPC's global pool, which it zeroes whole: 32 bytes
// cleared for every byte received, the largest single cost of a snapshot
// on the client. (grpc.ForceCodecV2 is marked experimental: should gRPC
// drop it, the build breaks here and this codec can go, at that cost.)
//
// It also counts what it decodes: every byte atrest reads from etcd
// passes here (Client.ReadBytes).
type snapshotCodec struct {
	pool mem.BufferPool
	read *readCounter
}

// readCounter counts the bytes of the messages decoded from etcd: of
// snapshot streams, and of everything else (ranges, watch events).
type readCounter struct{ snapshot, other atomic.Int64 }

var protoCodec = encoding.GetCodecV2("proto")

// snapshotPool is shared by every client: it is safe for concurrent use
// and holds nothing but spare buffers.
var snapshotPool = func() mem.BufferPool {
	p, err := mem.NewBinaryTieredBufferPool(8, 12, 14, 15, 16, 20)
	if err != nil {
		panic(err)
	}
	return p
}()

func (c snapshotCodec) Marshal(v any) (mem.BufferSlice, error) { return protoCodec.Marshal(v) }

func (c snapshotCodec) Unmarshal(data mem.BufferSlice, v any) error {
	var m proto.Message
	switch x := v.(type) {
	case proto.Message:
		m = x
	case protoadapt.MessageV1:
		m = protoadapt.MessageV2Of(x)
	default:
		return fmt.Errorf("etcd client: cannot decode %T", v)
	}
	if _, ok := m.(*etcdserverpb.SnapshotResponse); ok {
		c.read.snapshot.Add(int64(data.Len()))
	} else {
		c.read.other.Add(int64(data.Len()))
	}
	buf := data.MaterializeToBuffer(c.pool)
	defer buf.Free()
	// proto.Unmarshal copies bytes fields: nothing refers to buf after.
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

func (snapshotCodec) Name() string { return protoCodec.Name() }

func newEtcdClient(cfg Config, tlsCfg *tls.Config, endpoints []string, read *readCounter) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		DialOptions:          []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.ForceCodecV2(snapshotCodec{pool: snapshotPool, read: read}))},
		Endpoints:            endpoints,
		TLS:                  tlsCfg,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		Logger:               zap.New(slogCore{log: cfg.Logger.With("component", "etcd-client")}),
	})
}

// memberStatus is the member a snapshot is taken from, as it answered.
type memberStatus struct {
	endpoint string
	version  string
	revision int64
}

// member returns the first endpoint that answers a status call and is a
// voting member.
func (c *Client) member(ctx context.Context, timeout time.Duration) (memberStatus, error) {
	var errs []error
	for _, ep := range c.cfg.Endpoints {
		sctx, cancel := context.WithTimeout(ctx, timeout)
		st, err := c.cli.Status(sctx, ep)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("etcd %s: status: %w", ep, err))
			continue
		}
		if st.IsLearner {
			// A learner may lag the cluster: its snapshot could miss writes.
			errs = append(errs, fmt.Errorf("etcd %s: is a learner, not a voting member", ep))
			continue
		}
		return memberStatus{endpoint: ep, version: st.Version, revision: st.Header.GetRevision()}, nil
	}
	return memberStatus{}, fmt.Errorf("no etcd endpoint answers: %w", errors.Join(errs...))
}

// ErrNotFound: the key is not in etcd.
var ErrNotFound = errors.New("not found")

// RawGet returns the value stored under key exactly as etcd holds it (for
// an encrypted object: the envelope with its "k8s:enc:" prefix).
func (c *Client) RawGet(ctx context.Context, key string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	resp, err := c.cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("etcd get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("etcd get %s: %w", key, ErrNotFound)
	}
	return resp.Kvs[0].Value, nil
}

// slogCore sends the etcd client's zap logs to slog. The client logs
// routine progress at info ("opened snapshot stream") and trouble at warn
// and above; only trouble is worth an operator's attention.
type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field
}

func (c slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel }

func (c slogCore) With(fields []zapcore.Field) zapcore.Core {
	return slogCore{log: c.log, fields: append(append([]zapcore.Field(nil), c.fields...), fields...)}
}

func (c slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(append([]zapcore.Field(nil), c.fields...), fields...) {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields))
	for k, v := range enc.Fields {
		attrs = append(attrs, slog.Any(k, v))
	}
	level := slog.LevelWarn
	if e.Level >= zapcore.ErrorLevel {
		level = slog.LevelError
	}
	c.log.LogAttrs(context.Background(), level, e.Message, attrs...)
	return nil
}

func (slogCore) Sync() error { return nil }

// idleReader fails a stream that delivers nothing for a while by cancelling
// its context: a member that hangs mid-snapshot must not hang atrest.
type idleReader struct {
	r      io.Reader
	timer  *time.Timer
	idle   time.Duration
	cancel context.CancelCauseFunc
}

func newIdleReader(r io.Reader, idle time.Duration, cancel context.CancelCauseFunc) *idleReader {
	ir := &idleReader{r: r, idle: idle, cancel: cancel}
	ir.timer = time.AfterFunc(idle, func() {
		cancel(fmt.Errorf("no snapshot data for %s", idle))
	})
	return ir
}

func (ir *idleReader) Read(p []byte) (int, error) {
	n, err := ir.r.Read(p)
	if n > 0 {
		ir.timer.Reset(ir.idle)
	}
	return n, err
}

func (ir *idleReader) stop() { ir.timer.Stop() }
