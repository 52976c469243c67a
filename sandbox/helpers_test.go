//go:build sandbox

package sandbox_test

import (
	"crypto/x509"

	"github.com/spf13/pflag"
)

func x509CertPool(pem []byte) *x509.CertPool {
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pem)
	return p
}

func newFlagSet() *pflag.FlagSet { return pflag.NewFlagSet("sandbox", pflag.ContinueOnError) }
