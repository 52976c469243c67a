package controlplane

import "io"

// Failpoints are the points at which atrest calls Options.Failpoint, for
// fault-injection tests: each is where a crash leaves a node in a state
// that Cluster.Recover must repair.
const (
	// FailpointSwapAfterStop: the old kube-apiserver container is stopped,
	// still under its name; the replacement exists as
	// kube-apiserver-atrest-next.
	FailpointSwapAfterStop = "swap-after-stop"
	// FailpointSwapAfterRename: the old container is stopped and renamed
	// to kube-apiserver-atrest-prev; the replacement has not taken the
	// name yet, so the node has no kube-apiserver container.
	FailpointSwapAfterRename = "swap-after-rename"
	// FailpointSwapAfterStart: the replacement runs as kube-apiserver,
	// not yet ready; the old one is still kept as
	// kube-apiserver-atrest-prev.
	FailpointSwapAfterStart = "swap-after-start"
	// FailpointWriteMidStream: half of a provider file's bytes (or of its
	// backup's) have been sent to the node.
	FailpointWriteMidStream = "write-mid-stream"
)

// Failpoints lists every failpoint name, in the order a change meets them.
var Failpoints = []string{FailpointWriteMidStream, FailpointSwapAfterStop, FailpointSwapAfterRename, FailpointSwapAfterStart}

// failpoint calls Options.Failpoint, when set.
func (n *Node) failpoint(name string) {
	if n.opts.Failpoint != nil {
		n.opts.Failpoint(name)
	}
}

// midStream reads data, calling fail once half of it has been read (and
// so handed to the SSH session): a crash there cuts a write in two.
type midStream struct {
	data []byte
	off  int
	fail func()
}

func (m *midStream) Read(p []byte) (int, error) {
	if m.off >= len(m.data) {
		return 0, io.EOF
	}
	half := len(m.data) / 2
	if m.off == half && m.fail != nil {
		fail := m.fail
		m.fail = nil
		fail()
	}
	end := len(m.data)
	if m.off < half {
		end = half
	}
	k := copy(p, m.data[m.off:end])
	m.off += k
	return k, nil
}
