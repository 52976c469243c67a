//go:build tools

// Blank import keeps etcdutl in go.mod under `go mod tidy`; tools/build.sh
// builds it, nothing imports it. etcdsnap's measurement (measure.sh)
// compares the snapshot drill with `etcdutl snapshot status` on the same
// file: Debian ships etcd 3.4, which has no etcdutl.
package tools

import _ "go.etcd.io/etcd/etcdutl/v3"
