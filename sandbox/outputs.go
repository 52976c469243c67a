package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"text/template"
)

// ClusterName is the sandbox cluster's name: cluster_name in its cluster.yml
// and cluster.name in its settings, so it names the keyring in Vault.
const ClusterName = "atrest-sandbox"

var clusterTmpl = template.Must(template.New("cluster.yml").Parse(`# Written by the atrest sandbox: its nodes, as RKE describes them.
cluster_name: ` + ClusterName + `
ssh_key_path: {{.SSHKeyFile}}
nodes:
{{- range .Nodes}}
  - address: {{.Address}}
    hostname_override: {{.Name}}
    user: root
    role: [controlplane, etcd, worker]
    docker_socket: /var/run/docker.sock
{{- end}}
services:
  kube-api:
    secrets_encryption_config:
      enabled: false
`))

// DisabledBlock is the secrets_encryption_config the sandbox's cluster.yml
// starts with, under services.kube-api.
const DisabledBlock = "    secrets_encryption_config:\n      enabled: false\n"

// WriteClusterYML writes file, the sandbox's cluster.yml with block (a
// secrets_encryption_config, indented as under services.kube-api) in place
// of DisabledBlock, for tests of each desired state.
func (sb *Sandbox) WriteClusterYML(file, block string) error {
	base, err := os.ReadFile(sb.ClusterYML)
	if err != nil {
		return err
	}
	if !strings.Contains(string(base), DisabledBlock) {
		return fmt.Errorf("sandbox: %s has no secrets_encryption_config block to replace", sb.ClusterYML)
	}
	return os.WriteFile(file, []byte(strings.Replace(string(base), DisabledBlock, block, 1)), 0o600)
}

var kubeconfigTmpl = template.Must(template.New("kubeconfig").Parse(`apiVersion: v1
kind: Config
clusters:
  - name: atrest-sandbox
    cluster:
      server: {{(index .Nodes 0).APIServerURL}}
      certificate-authority: {{.CAFile}}
users:
  - name: kube-admin
    user:
      client-certificate: {{.AdminCert}}
      client-key: {{.AdminKey}}
contexts:
  - name: atrest-sandbox
    context:
      cluster: atrest-sandbox
      user: kube-admin
current-context: atrest-sandbox
`))

// The settings file atrest reads (see package settings).
var settingsTmpl = template.Must(template.New("settings.yaml").Parse(`# Written by the atrest sandbox: atrest's runtime settings for it.
cluster:
  name: ` + ClusterName + `
git:
  url: {{.Git.SSHURL}}
  ref: main
  path: .
  sshKeyFile: {{.Git.SSHKeyFile}}
  knownHostsFile: {{.KnownHostsFile}}
  interval: 10s
vault:
  address: {{.Vault.Address}}
{{- if .Vault.CAFile}}
  caFile: {{.Vault.CAFile}}
{{- end}}
{{- if .Vault.PlainHTTP}}
  # The sandbox's Vault listens on plain http (unless persistent): allowed,
  # and warned about at every start. Never in production.
  insecureAllowHTTP: true
{{- end}}
  authMethod: token
  tokenFile: {{.Vault.TokenFile}}
  kvMount: secret
  prefix: atrest
etcd:
  endpoints: [{{.EtcdEndpoint}}]
  caFile: {{.CAFile}}
  certFile: {{.EtcdCertFile}}
  keyFile: {{.EtcdKeyFile}}
kubernetes:
  kubeconfig: {{.Kubeconfig}}
ssh:
  keyFile: {{.SSHKeyFile}}
  knownHostsFile: {{.KnownHostsFile}}
snapshots:
  dir: {{.Dir}}/snapshots
{{- if .KMSPluginImage}}
# provider: vault-transit in atrest.yaml: the plugin on every node, and the
# Transit key it wraps kube-apiserver's data keys with.
kms:
  image: {{.KMSPluginImage}}
  transitMount: transit
  approleMount: approle
{{- if .Vault.CAFile}}
  vaultCAFile: {{.Vault.CAFile}}
{{- end}}
{{- if .Vault.PlainHTTP}}
  vaultInsecureAllowHTTP: true
{{- end}}
  awaitTimeout: 3m
{{- end}}
listen:
  metrics: {{.MetricsAddress}}
# The sandbox is for trying and testing every transition: its commits
# rotate every few seconds and turn encryption off, which the defaults
# (1h, no disable) refuse on a real cluster.
policy:
  minRotationInterval: 10s
  allowDisable: true
`))

var envTmpl = template.Must(template.New("env").Parse(`# Written by the atrest sandbox. Use: source {{.EnvFile}}
export ATREST_SETTINGS={{.SettingsFile}}
export ATREST_CLUSTER_NAME=` + ClusterName + `
export RKE_CONFIG={{.ClusterYML}}
export KUBECONFIG={{.Kubeconfig}}
export VAULT_ADDR={{.Vault.Address}}
export VAULT_TOKEN=$(cat {{.Vault.TokenFile}})
{{- if .Vault.CAFile}}
export VAULT_CACERT={{.Vault.CAFile}}
{{- end}}
export ETCDCTL_API=3
export ETCDCTL_ENDPOINTS={{.EtcdEndpoint}}
export ETCDCTL_CACERT={{.CAFile}}
export ETCDCTL_CERT={{.EtcdCertFile}}
export ETCDCTL_KEY={{.EtcdKeyFile}}
export ATREST_SANDBOX_GIT_SSH_URL={{.Git.SSHURL}}
export ATREST_SANDBOX_GIT_HTTP_URL={{.Git.HTTPURL}}
export GIT_SSH_COMMAND="ssh -i {{.Git.SSHKeyFile}} -o UserKnownHostsFile={{.KnownHostsFile}} -o StrictHostKeyChecking=yes"
`))

// MetricsAddress is where an atrest daemon pointed at the sandbox serves.
func (sb *Sandbox) MetricsAddress() string { return sb.infraIP() + ":9795" }

func (sb *Sandbox) writeOutputs(ctx context.Context) error {
	sb.ClusterYML = sb.path("cluster.yml")
	sb.Kubeconfig = sb.path("kubeconfig")
	sb.SettingsFile = sb.path("settings.yaml")
	sb.EnvFile = sb.path("env")
	if err := os.MkdirAll(sb.path("snapshots"), 0o700); err != nil {
		return err
	}
	for _, out := range []struct {
		file string
		tmpl *template.Template
	}{
		{sb.ClusterYML, clusterTmpl}, {sb.Kubeconfig, kubeconfigTmpl},
		{sb.SettingsFile, settingsTmpl}, {sb.EnvFile, envTmpl},
	} {
		var b bytes.Buffer
		if err := out.tmpl.Execute(&b, sb); err != nil {
			return fmt.Errorf("render %s: %w", out.file, err)
		}
		if err := writeFile(out.file, b.Bytes()); err != nil {
			return err
		}
	}
	// The repository starts with the cluster as it is: encryption off.
	clusterYML, err := os.ReadFile(sb.ClusterYML)
	if err != nil {
		return err
	}
	_, err = sb.Commit(ctx, "Add the sandbox cluster", map[string]string{"cluster.yml": string(clusterYML)})
	return err
}

// Summary describes the running sandbox for people.
func (sb *Sandbox) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sandbox in %s (addresses 127.0.%d.0/24)\n", sb.Dir, sb.Slot)
	for _, n := range sb.Nodes {
		fmt.Fprintf(&b, "  %s: ssh root@%s, kube-apiserver %s\n", n.Name, n.Address, n.APIServerURL)
	}
	fmt.Fprintf(&b, "  etcd:  %s\n  vault: %s\n  git:   %s\n         %s (user %s)\n", sb.EtcdEndpoint, sb.Vault.Address, sb.Git.SSHURL, sb.Git.HTTPURL, sb.Git.Username)
	fmt.Fprintf(&b, "  files: %s, %s, %s\n  shell: source %s\n", sb.ClusterYML, sb.SettingsFile, sb.Kubeconfig, sb.EnvFile)
	return b.String()
}
