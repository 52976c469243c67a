package controlplane

// CutSSH closes the node's SSH connection as a crash of atrest would: the
// node sees the connection drop, whatever was in flight.
func CutSSH(n *Node) error { return n.ssh.Close() }

// FileFetches is how often the node sent its provider file's bytes.
func FileFetches(n *Node) int {
	n.fileMu.Lock()
	defer n.fileMu.Unlock()
	return n.fileFetches
}
