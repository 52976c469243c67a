//go:build sandbox

package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/atrest-io/atrest/internal/leaktest"
)

// outputs is what atrest printed in each test, swept for key material when
// the test ends (noteOutput).
var outputs = struct {
	sync.Mutex
	byTest map[string][]string
}{byTest: map[string][]string{}}

// noteOutput keeps what atrest printed for the sweep at the end of t. The
// first note of a test registers the sweep, so every test that runs atrest
// is swept, whether it passes or fails.
func noteOutput(t *testing.T, out string) {
	t.Helper()
	outputs.Lock()
	defer outputs.Unlock()
	if _, ok := outputs.byTest[t.Name()]; !ok {
		t.Cleanup(func() { sweep(t) })
	}
	outputs.byTest[t.Name()] = append(outputs.byTest[t.Name()], out)
}

// sweep fails t when any key material Vault holds, of any cluster, shows
// in what atrest printed during t, in a Vault document that is not key
// material (keyring, journal, lock, snapshot references, revision, daemon
// state), or in `docker inspect` of any node's kube-apiserver container (its
// flags, mounts, labels and environment).
func sweep(t *testing.T) {
	outputs.Lock()
	said := outputs.byTest[t.Name()]
	delete(outputs.byTest, t.Name())
	outputs.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := sb.VaultClient()
	if err != nil {
		t.Errorf("leak sweep: %v", err)
		return
	}
	var secrets [][]byte
	places := map[string]string{}
	for name := range vaultDocs(t) {
		sec, err := c.Logical().ReadWithContext(ctx, "secret/data/atrest/"+name)
		if err != nil || sec == nil {
			t.Errorf("leak sweep: read secret/data/atrest/%s: %v", name, err)
			continue
		}
		data, _ := sec.Data["data"].(map[string]any)
		parts := strings.Split(name, "/")
		if len(parts) >= 2 && (parts[1] == "keys" || parts[1] == "preserved") {
			if s, ok := data["secret"].(string); ok {
				if raw, err := base64.StdEncoding.DecodeString(s); err == nil && len(raw) > 0 {
					secrets = append(secrets, raw)
				}
			}
			continue
		}
		doc, _ := json.Marshal(data)
		places["Vault document "+name] = string(doc)
	}
	for i := range sb.Nodes {
		out, err := sb.Docker(ctx, i, "inspect", "kube-apiserver")
		if err != nil {
			// A test may leave a node mid-swap; what is there is inspected.
			out, _ = sb.Docker(ctx, i, "ps", "-a", "--no-trunc")
		}
		places[fmt.Sprintf("docker inspect kube-apiserver on node %d", i+1)] = out
	}
	for i, s := range said {
		places[fmt.Sprintf("atrest output %d of %d", i+1, len(said))] = s
	}
	if len(secrets) == 0 {
		return
	}
	for where, text := range places {
		all := leaktest.Views(text)
		for _, secret := range secrets {
			if how := leaktest.Find(all, secret); how != "" {
				t.Errorf("leak sweep: key material (%s) in %s", how, where)
			}
		}
	}
	t.Logf("leak sweep: %d keys against %d outputs, %d Vault documents and %d containers", len(secrets), len(said), len(places)-len(said)-len(sb.Nodes), len(sb.Nodes))
}
