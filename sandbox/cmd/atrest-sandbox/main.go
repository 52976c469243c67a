// Command atrest-sandbox starts and stops atrest's sandbox: a real RKE-style
// control plane on this machine, on loopback (see package sandbox).
//
//	atrest-sandbox up [--dir .sandbox] [--nodes 3] [--persistent-vault]
//	atrest-sandbox down [--dir .sandbox]
//
// `make sandbox-up` and `make sandbox-down` build the binaries and run it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/atrest-io/atrest/sandbox"
)

func main() {
	sandbox.RunHelper()
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	dir := fs.String("dir", ".sandbox", "state directory")
	nodes := fs.Int("nodes", 1, "number of controlplane nodes (up)")
	persistent := fs.Bool("persistent-vault", false, "run Vault with file storage, initialised and unsealed, instead of a dev server (up)")
	kubeAPIServer := fs.String("kube-apiserver", os.Getenv("ATREST_KUBE_APISERVER"), "kube-apiserver binary (up)")
	vault := fs.String("vault", os.Getenv("ATREST_VAULT"), "vault binary (up)")
	_ = fs.Parse(os.Args[2:])

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch os.Args[1] {
	case "up":
		sb, err := sandbox.Start(ctx, sandbox.Options{
			Dir: *dir, Nodes: *nodes, PersistentVault: *persistent,
			KubeAPIServer: *kubeAPIServer, Vault: *vault, Log: os.Stderr,
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Print(sb.Summary())
	case "down":
		if err := sandbox.Destroy(*dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "sandbox in %s stopped and removed\n", *dir)
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: atrest-sandbox up|down [--dir DIR] [--nodes N] [--persistent-vault]")
	os.Exit(2)
}
