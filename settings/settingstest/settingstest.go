// Package settingstest helps tests that load atrest's runtime settings.
package settingstest

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/atrest-io/atrest/settings"
)

// ClearEnv unsets, for the test, every ATREST_* variable and the standard
// variables settings fall back to (a shell that sourced a sandbox's env sets
// some), so that only the file and flags under test count.
func ClearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "ATREST_") {
			t.Setenv(name, "")
		}
	}
	for _, name := range []string{"VAULT_ADDR", "VAULT_AGENT_ADDR", "VAULT_TOKEN", "VAULT_SKIP_VERIFY", "KUBECONFIG"} {
		t.Setenv(name, "")
	}
}

// Files returns every setting of s that names a file and is set, by its
// dotted name (string fields whose YAML key ends in "File", and
// kubernetes.kubeconfig), as pointers a test may redirect.
func Files(s *settings.Settings) map[string]*string {
	out := map[string]*string{}
	sections := reflect.ValueOf(s).Elem()
	for i := range sections.NumField() {
		sect := sections.Field(i)
		if sect.Kind() != reflect.Struct || !sections.Type().Field(i).IsExported() {
			continue
		}
		sectName, _, _ := strings.Cut(sections.Type().Field(i).Tag.Get("json"), ",")
		for j := range sect.NumField() {
			f := sect.Type().Field(j)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if f.Type.Kind() != reflect.String || !(strings.HasSuffix(name, "File") || name == "kubeconfig") {
				continue
			}
			if p := sect.Field(j).Addr().Interface().(*string); *p != "" {
				out[sectName+"."+name] = p
			}
		}
	}
	return out
}
