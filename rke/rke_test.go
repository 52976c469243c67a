package rke

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/atrest-io/atrest/cluster"
)

// running is a config as atrest runs it mid-rotation: two aescbc keys
// for secrets, a secretbox key for configmaps, identity last.
func running(t *testing.T) *cluster.EncryptionConfig {
	t.Helper()
	data := `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - aescbc:
      keys:
      - name: atrest-20261201-a1b2
        secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=
      - name: key-x7k2p
        secret: RTczRjFDODMwQzAyMDVBREU4NDJBMUZFNDhCNzM5N0I=
  - identity: {}
- resources: [configmaps]
  providers:
  - secretbox:
      keys:
      - name: atrest-20261201-c3d4
        secret: ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=
  - identity: {}
`
	cfg, err := cluster.ParseEncryptionConfig("running", "", []byte(data), "")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestClusterYMLIsWhatRuns(t *testing.T) {
	in, err := os.ReadFile("testdata/cluster.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := running(t)
	for _, reload := range []bool{false, true} {
		out, err := ClusterYML(in, cfg, reload)
		if err != nil {
			t.Fatal(err)
		}
		// RKE reads it: atrest's reading of cluster.yml is RKE's (the
		// same decoders, the same two passes), custom_config included.
		got, err := cluster.Parse("rke-up.yml", out)
		if err != nil {
			t.Fatalf("the cluster.yml for rke up does not read as RKE reads it:\n%v\n%s", err, out)
		}
		want, err := cluster.Parse("cluster.yml", in)
		if err != nil {
			t.Fatal(err)
		}
		if got.Desired.Mode != cluster.Custom || !bytes.Equal(got.Desired.Custom.Render(), cfg.Render()) {
			t.Fatalf("custom_config is not the config that runs:\n%s", out)
		}
		// The file RKE deploys from it is that config, read as strictly as
		// kube-apiserver reads it, and is the one PrepareState records.
		file, err := DeployedFrom(out)
		if err != nil {
			t.Fatal(err)
		}
		deployed, err := cluster.ParseEncryptionConfig("deployed", "", OnDisk(file), "")
		if err != nil {
			t.Fatalf("kube-apiserver would refuse the file RKE deploys:\n%v", err)
		}
		if !bytes.Equal(deployed.Render(), cfg.Render()) {
			t.Fatalf("RKE deploys another config:\n%s", file)
		}
		if recorded, err := CustomProviderFile(cfg); err != nil || recorded != file {
			t.Fatalf("CustomProviderFile differs from RKE's rendering (%v):\n%s\n---\n%s", err, recorded, file)
		}
		// Nothing else changed, but the reload flag when asked.
		wantArgs := want.KubeAPI.ExtraArgs
		if reload {
			wantArgs[cluster.FlagAutomaticReload] = "true"
		}
		got.Desired, want.Desired = cluster.Desired{}, cluster.Desired{}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("reload %v: other fields changed:\n got %+v\nwant %+v", reload, got, want)
		}
		if !bytes.Contains(out, []byte("# A cluster.yml with every RKE section present")) {
			t.Error("the comments are gone")
		}
	}
	// atrest runs no config: encryption off, no custom_config.
	out, err := ClusterYML(in, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	got, err := cluster.Parse("rke-up.yml", out)
	if err != nil || got.Desired.Mode != cluster.Disabled {
		t.Fatalf("no config: %v, mode %v", err, got.Desired.Mode)
	}
}

func TestClusterYMLRefuses(t *testing.T) {
	for _, in := range []string{"- a list\n", "services: [a]\n", "services:\n  kube-api: 3\n", "{"} {
		if _, err := ClusterYML([]byte(in), running(t), false); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestManagedProviderFile(t *testing.T) {
	a, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := GenerateKey()
	cfg, err := cluster.ParseEncryptionConfig("rke", "", OnDisk(ManagedProviderFile([]cluster.Key{a, b})), "")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Chains()["secrets"].String(), "[aescbc:v1:"+a.Name+", aescbc:v1:"+b.Name+", identity]"; got != want {
		t.Errorf("chain %s, want %s", got, want)
	}
	if !strings.HasPrefix(a.Name, "key-") || len(a.Name) != 9 || len(a.Secret) != 32 {
		t.Errorf("not an RKE key: %s, %d bytes", a.Name, len(a.Secret))
	}
}

func TestPrepareAndStripState(t *testing.T) {
	in, err := os.ReadFile("testdata/cluster.rkestate")
	if err != nil {
		t.Fatal(err)
	}
	file, err := CustomProviderFile(running(t))
	if err != nil {
		t.Fatal(err)
	}
	prepared, err := PrepareState(in, file)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Current struct {
			EncryptionConfig string `json:"encryptionConfig"`
			RKEConfig        struct {
				Services struct {
					KubeAPI struct {
						Sec struct {
							Enabled bool `json:"enabled"`
						} `json:"secretsEncryptionConfig"`
					} `json:"kubeApi"`
				} `json:"services"`
			} `json:"rkeConfig"`
		} `json:"currentState"`
		Desired struct {
			EncryptionConfig string `json:"encryptionConfig"`
		} `json:"desiredState"`
	}
	if err := json.Unmarshal(prepared, &st); err != nil {
		t.Fatal(err)
	}
	if st.Current.EncryptionConfig != file || st.Desired.EncryptionConfig != file || !st.Current.RKEConfig.Services.KubeAPI.Sec.Enabled {
		t.Fatalf("prepared state:\n%s", prepared)
	}
	// What rke up writes back: the custom_config in both copies of
	// cluster.yml too. Stripped, nothing holds a key, the rest is intact.
	var doc map[string]any
	if err := json.Unmarshal(prepared, &doc); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"currentState", "desiredState"} {
		sec := doc[s].(map[string]any)["rkeConfig"].(map[string]any)["services"].(map[string]any)["kubeApi"].(map[string]any)["secretsEncryptionConfig"].(map[string]any)
		sec["customConfig"] = map[string]any{"resources": []any{"secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}}
	}
	afterUp, _ := json.Marshal(doc)
	if holds, err := HoldsKeys(afterUp); err != nil || !holds {
		t.Fatalf("HoldsKeys of a state with keys: %v, %v", holds, err)
	}
	stripped, removed, err := StripState(afterUp)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 4 || bytes.Contains(stripped, []byte("MDEyMzQ1")) || bytes.Contains(stripped, []byte("encryptionConfig")) {
		t.Fatalf("removed %v:\n%s", removed, stripped)
	}
	if holds, _ := HoldsKeys(stripped); holds {
		t.Fatal("the stripped state holds keys")
	}
	var a, b map[string]any
	_ = json.Unmarshal(in, &a)
	_ = json.Unmarshal(stripped, &b)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("the stripped state is not the state before:\n%s\n---\n%s", in, stripped)
	}
	if !bytes.Contains(stripped, []byte(`"addonJobTimeout": 45`)) {
		t.Errorf("numbers changed:\n%s", stripped)
	}
}

func TestPrepareStateRefuses(t *testing.T) {
	for _, in := range []string{`{}`, `[]`, `{"desiredState": {}}`, `not json`} {
		if _, err := PrepareState([]byte(in), "x"); err == nil {
			t.Errorf("%s: no error", in)
		}
	}
}

func TestPaths(t *testing.T) {
	if got := StateFilePath("/a/b/cluster.yml"); got != "/a/b/cluster.rkestate" {
		t.Error(got)
	}
	if got := KubeconfigPath("/a/b/cluster.yml"); got != "/a/b/kube_config_cluster.yml" {
		t.Error(got)
	}
}
