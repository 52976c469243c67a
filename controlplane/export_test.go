package controlplane

// CutSSH closes the node's SSH connection as a crash of atrest would: the
// node sees the connection drop, whatever was in flight.
func CutSSH(n *Node) error { return n.ssh.Close() }
