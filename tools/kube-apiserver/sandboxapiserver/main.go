// Command sandboxapiserver is kube-apiserver, built from the same module and
// run by the same code (app.NewAPIServerCommand), with one knob the
// Kubernetes integration tests use and the sandbox needs: how often
// --encryption-provider-config-automatic-reload polls the provider file.
// kube-apiserver polls every minute; $ATREST_SANDBOX_RELOAD_POLL (a Go
// duration) sets it shorter, so the sandbox's reload stages take seconds,
// not minutes. Unset, it behaves exactly as the release does. It is for the
// sandbox only: atrest's time-outs assume the release's one minute.
//
// The same file is linked into tools/kube-apiserver-v1.32.
package main

import (
	"fmt"
	"os"
	"time"
	_ "time/tzdata" // for timeZone support in CronJob, as the release

	"k8s.io/apiserver/pkg/server/options/encryptionconfig/controller"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	if s := os.Getenv("ATREST_SANDBOX_RELOAD_POLL"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			fmt.Fprintf(os.Stderr, "ATREST_SANDBOX_RELOAD_POLL=%q: want a positive Go duration such as 2s\n", s)
			os.Exit(2)
		}
		controller.EncryptionConfigFileChangePollDuration = d
	}
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
