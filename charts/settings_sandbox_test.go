//go:build sandbox

package charts

import (
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/atrest-io/atrest/settings"
	"github.com/atrest-io/atrest/settings/settingstest"
)

// TestSettingsNameMountedFiles: for each way of setting the chart up, the
// settings file it renders loads as atrest loads it; every file it names is
// mounted from the Secret and key the values say; and, with those files in
// place, it passes atrest's own validation for everything `atrest run`
// needs.
func TestSettingsNameMountedFiles(t *testing.T) {
	const saToken = "the pod's service-account token"
	const allowed = "0123456789abcdef0123456789abcdef01234567"
	minimal := map[string]string{
		"git.sshKeyFile": "atrest-git/identity", "git.knownHostsFile": "atrest-git/known_hosts",
		"etcd.caFile": "atrest-etcd/ca.crt", "etcd.certFile": "atrest-etcd/tls.crt", "etcd.keyFile": "atrest-etcd/tls.key",
		"ssh.keyFile": "atrest-ssh/ssh-privatekey", "ssh.knownHostsFile": "atrest-ssh/known_hosts",
		"vault.kubernetesTokenFile": "projected token for audience vault",
	}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := maps.Clone(base)
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	https := []string{"git.url=https://git.example.com/platform/clusters.git", "git.ssh.existingSecret=", "git.https.existingSecret=atrest-git-https"}
	for _, tt := range []struct {
		name  string
		files []string
		sets  []string
		want  map[string]string // file setting -> where it comes from: "secret/key", a projected token's audience, or saToken (the default of a setting only Kubernetes auth reads)
		env   map[string]string // variables the Deployment sets from Secrets -> "secret/key"
	}{
		{name: "minimal", files: []string{minimalValues}, want: minimal},
		{name: "one revision allowed", files: []string{minimalValues}, sets: []string{"git.allowRevision=" + allowed}, want: minimal},
		{name: "full", files: []string{fullValues}, want: with(minimal,
			"git.sshKeyFile", "atrest-git-ssh/identity", "git.knownHostsFile", "atrest-git-ssh/known_hosts",
			"git.caFile", "atrest-git-ca/ca.crt", "git.allowedSignersFile", "atrest-git-signers/allowed_signers",
			"git.openPGPKeyringFile", "atrest-git-signers/keyring.asc", "vault.caFile", "atrest-vault-ca/ca.crt",
			"vault.clientCertFile", "atrest-vault-client/tls.crt", "vault.clientKeyFile", "atrest-vault-client/tls.key",
			"vault.kubernetesTokenFile", "projected token for audience vault", "listen.webhookSecretFile", "atrest-webhook/secret")},
		{name: "AppRole", files: []string{minimalValues}, sets: []string{"vault.authMethod=approle", "vault.approle.roleID=role-id", "vault.approle.existingSecret=atrest-approle", "vault.approle.secretIDKey=sid"},
			want: with(minimal, "vault.approleSecretIDFile", "atrest-approle/sid", "vault.kubernetesTokenFile", saToken)},
		{name: "token", files: []string{minimalValues}, sets: []string{"vault.authMethod=token", "vault.token.existingSecret=atrest-vault-token"},
			want: with(minimal, "vault.tokenFile", "atrest-vault-token/token", "vault.kubernetesTokenFile", saToken)},
		{name: "Git over HTTPS with a password", files: []string{minimalValues}, sets: https,
			want: with(minimal, "git.sshKeyFile", "", "git.knownHostsFile", "", "git.passwordFile", "atrest-git-https/password"),
			env:  map[string]string{"ATREST_GIT_USERNAME": "atrest-git-https/username"}},
		{name: "Git over HTTPS with a bearer token", files: []string{minimalValues}, sets: append(slices.Clone(https), "git.https.bearerTokenKey=token"),
			want: with(minimal, "git.sshKeyFile", "", "git.knownHostsFile", "", "git.bearerTokenFile", "atrest-git-https/token")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			objs := render(t, "t", "atrest", tt.files, tt.sets...)
			d := typed[appsv1.Deployment](t, find(t, objs, "Deployment", ""))
			cm := settingsConfigMap(t, objs)
			c := d.Spec.Template.Spec.Containers[0]
			file := filepath.Join(t.TempDir(), "settings.yaml")
			if err := os.WriteFile(file, []byte(cm.Data["settings.yaml"]), 0o600); err != nil {
				t.Fatal(err)
			}
			if src := mountSource(d, "/etc/atrest/settings.yaml"); src != "configmap "+cm.Name+"/settings.yaml" || c.Args[len(c.Args)-1] != "/etc/atrest/settings.yaml" {
				t.Errorf("atrest reads %s, mounted from %s", c.Args[len(c.Args)-1], src)
			}

			settingstest.ClearEnv(t)
			t.Setenv("ATREST_SETTINGS", file)
			env := map[string]string{}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					env[e.Name] = e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
					t.Setenv(e.Name, "from-"+e.ValueFrom.SecretKeyRef.Key)
				}
			}
			if !maps.Equal(env, tt.env) {
				t.Errorf("variables from Secrets %v, want %v", env, tt.env)
			}
			s, err := settings.Bind(pflag.NewFlagSet("test", pflag.ContinueOnError)).Load()
			if err != nil {
				t.Fatalf("atrest refuses the chart's settings:\n%v\n%s", err, cm.Data["settings.yaml"])
			}

			files := settingstest.Files(s)
			got := map[string]string{}
			for name, p := range files {
				got[name] = mountSource(d, *p)
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("the settings' files come from\n%v\nwant\n%v", got, tt.want)
			}
			if src := mountSource(d, s.Snapshots.Dir); !strings.HasPrefix(src, "claim ") {
				t.Errorf("snapshots.dir %s is on %s, want the snapshots claim", s.Snapshots.Dir, src)
			}
			if src := mountSource(d, s.Git.CacheDir); src != "emptyDir" {
				t.Errorf("git.cacheDir %s is on %s, want an emptyDir of the pod's own", s.Git.CacheDir, src)
			}
			for _, l := range []struct{ setting, addr, port string }{{"listen.metrics", s.Listen.Metrics, "http-metrics"}, {"listen.webhook", s.Listen.Webhook, "webhook"}} {
				if l.addr == "" {
					continue
				}
				_, port, err := net.SplitHostPort(l.addr)
				if err != nil {
					t.Fatalf("%s %q: %v", l.setting, l.addr, err)
				}
				if containerPort(c, l.port) != port {
					t.Errorf("%s listens on %s, the container's port %s is %s", l.setting, l.addr, l.port, containerPort(c, l.port))
				}
			}
			if s.Cluster.Name != "prod-eu-1" || s.Source("cluster.name") != "settings file "+file {
				t.Errorf("cluster.name is %q from %s, want the values' clusterName prod-eu-1 from the settings file", s.Cluster.Name, s.Source("cluster.name"))
			}
			if !s.Kubernetes.InCluster {
				t.Error("kubernetes.inCluster is not set: atrest would look for a kubeconfig in the pod")
			}
			if want := map[bool]string{true: allowed}[slices.Contains(tt.sets, "git.allowRevision="+allowed)]; s.Git.AllowRevision != want {
				t.Errorf("git.allowRevision is %q, want %q", s.Git.AllowRevision, want)
			}
			// The values' policy reaches the settings: the operator's, not
			// the committer's, bounds.
			if want := (settings.Policy{MinRotationInterval: time.Hour, MinSnapshotRetention: 2, AllowCustomConfig: true, AllowKMS: true}); s.Policy != want || s.Source("policy.allowDisable") != "settings file "+file {
				t.Errorf("policy settings %+v (allowDisable from %s), want the values' %+v from the settings file", s.Policy, s.Source("policy.allowDisable"), want)
			}

			dir := t.TempDir()
			for name, p := range files {
				stand := filepath.Join(dir, name)
				if err := os.WriteFile(stand, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				*p = stand
			}
			all := []settings.Need{settings.NeedCluster, settings.NeedGit, settings.NeedVault, settings.NeedEtcd, settings.NeedKubernetes, settings.NeedSSH, settings.NeedSnapshots, settings.NeedListen}
			if err := s.Validate(all...); err != nil {
				t.Errorf("atrest run would refuse the chart's settings:\n%v\n%s", err, cm.Data["settings.yaml"])
			}
		})
	}
}

// mountSource says where a path in the container comes from: "SECRET/KEY",
// "configmap NAME/KEY", "claim NAME", "emptyDir", a projected token, or the
// pod's service-account token; "not mounted" otherwise.
func mountSource(d *appsv1.Deployment, path string) string {
	pod := d.Spec.Template.Spec
	if path == "/var/run/secrets/kubernetes.io/serviceaccount/token" && pod.AutomountServiceAccountToken != nil && *pod.AutomountServiceAccountToken {
		return "the pod's service-account token"
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range pod.Containers[0].VolumeMounts {
		v := volumes[m.Name]
		var file string
		switch {
		case m.SubPath != "" && m.MountPath == path:
			file = m.SubPath
		case m.SubPath == "" && m.MountPath == path:
			switch {
			case v.PersistentVolumeClaim != nil:
				return "claim " + v.PersistentVolumeClaim.ClaimName
			case v.EmptyDir != nil:
				return "emptyDir"
			}
			continue
		case m.SubPath == "" && m.MountPath == filepath.Dir(path):
			file = filepath.Base(path)
		default:
			continue
		}
		switch {
		case v.Secret != nil:
			for _, it := range v.Secret.Items {
				if it.Path == file {
					return v.Secret.SecretName + "/" + it.Key
				}
			}
		case v.ConfigMap != nil:
			return "configmap " + v.ConfigMap.Name + "/" + file
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				if tok := src.ServiceAccountToken; tok != nil && tok.Path == file {
					return "projected token for audience " + tok.Audience
				}
			}
		}
	}
	return "not mounted"
}

func containerPort(c corev1.Container, name string) string {
	for _, p := range c.Ports {
		if p.Name == name {
			return strconv.Itoa(int(p.ContainerPort))
		}
	}
	return "missing"
}

// TestInsecureSettings: the chart renders atrest's DANGEROUS Vault and etcd
// settings only when the values ask for them (it refuses http:// without
// them: TestTemplateRefusesBadValues), and atrest run refuses the chart's
// settings with an http:// Vault or etcd endpoint without them.
func TestInsecureSettings(t *testing.T) {
	plain := []string{"vault.address=http://vault.example.com:8200", "etcd.endpoints={http://10.0.0.11:2379}"}
	allow := []string{"vault.insecureAllowHTTP=true", "vault.insecureSkipTLSVerify=true", "etcd.insecureAllowHTTP=true"}
	for _, tt := range []struct {
		name    string
		sets    []string
		allowed bool
		drop    bool // atrest loads the settings with the allowances turned off
		refused []string
	}{
		{name: "https, nothing allowed", sets: nil},
		{name: "http, allowed", sets: append(slices.Clone(plain), allow...), allowed: true},
		// What atrest says of an http address the chart let through.
		{name: "http, allowance dropped", sets: append(slices.Clone(plain), allow...), allowed: true, drop: true,
			refused: []string{"vault.address: \"http://vault.example.com:8200\" is plain http", "etcd.endpoints: \"http://10.0.0.11:2379\" is plaintext"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			objs := render(t, "t", "atrest", []string{minimalValues}, tt.sets...)
			cm := settingsConfigMap(t, objs)
			if got := strings.Contains(cm.Data["settings.yaml"], "insecure"); got != tt.allowed {
				t.Errorf("settings mention insecure: %v, want %v:\n%s", got, tt.allowed, cm.Data["settings.yaml"])
			}
			file := filepath.Join(t.TempDir(), "settings.yaml")
			if err := os.WriteFile(file, []byte(cm.Data["settings.yaml"]), 0o600); err != nil {
				t.Fatal(err)
			}
			settingstest.ClearEnv(t)
			t.Setenv("ATREST_SETTINGS", file)
			s, err := settings.Bind(pflag.NewFlagSet("test", pflag.ContinueOnError)).Load()
			if err != nil {
				t.Fatal(err)
			}
			if s.Vault.InsecureAllowHTTP != tt.allowed || s.Vault.InsecureSkipTLSVerify != tt.allowed || s.Etcd.InsecureAllowHTTP != tt.allowed {
				t.Errorf("vault %+v etcd %+v, want the insecure settings %v", s.Vault, s.Etcd, tt.allowed)
			}
			if tt.drop {
				s.Vault.InsecureAllowHTTP, s.Etcd.InsecureAllowHTTP = false, false
			}
			dir := t.TempDir()
			for name, p := range settingstest.Files(s) {
				stand := filepath.Join(dir, name)
				if err := os.WriteFile(stand, nil, 0o600); err != nil {
					t.Fatal(err)
				}
				*p = stand
			}
			err = s.Validate(settings.NeedVault, settings.NeedEtcd)
			if len(tt.refused) == 0 && err != nil {
				t.Fatalf("refused: %v", err)
			}
			for _, w := range tt.refused {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q: %v", w, err)
				}
			}
		})
	}
}
