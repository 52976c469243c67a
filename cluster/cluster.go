// Package cluster is atrest's model of an RKE cluster.yml: the nodes atrest
// reaches, the kube-apiserver settings it changes, and the desired state of
// encryption at rest (disabled, managed or custom), plus the atrest.yaml
// policy kept beside it in Git. It also renders and strictly validates the
// EncryptionConfiguration files that kube-apiserver reads. It does no I/O
// beyond reading the files it is asked to load.
package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// RKE's defaults, applied where cluster.yml leaves a value out.
const (
	DefaultSSHPort      = 22
	DefaultSSHKeyPath   = "~/.ssh/id_rsa"
	DefaultDockerSocket = "/var/run/docker.sock"
)

// Node roles in cluster.yml.
const (
	RoleControlPlane = "controlplane"
	RoleEtcd         = "etcd"
	RoleWorker       = "worker"
)

// Config is the part of an RKE cluster.yml that atrest uses. Node values have
// the top-level and RKE defaults applied.
type Config struct {
	ClusterName         string
	Nodes               []Node
	BastionHost         *Bastion // nil when cluster.yml has none
	PrefixPath          string   // RKE's prefix_path; "" means "/"
	RotateEncryptionKey bool     // rotate_encryption_key: one rotation requested
	KubeAPI             KubeAPI
	// EtcdPath is services.etcd.path: with an external etcd, the prefix
	// RKE gives kube-apiserver as --etcd-prefix ("" when unset).
	EtcdPath string
	Desired  Desired
}

// EtcdPrefix is the --etcd-prefix cluster.yml asks kube-apiserver to run
// with: extra_args' etcd-prefix, else services.etcd.path, else "" (none
// given: kube-apiserver's default, /registry).
func (c *Config) EtcdPrefix() string {
	if p := c.KubeAPI.ExtraArgs["etcd-prefix"]; p != "" {
		return p
	}
	return c.EtcdPath
}

// Node is one host of cluster.yml, with defaults applied.
type Node struct {
	Address          string
	Port             int
	InternalAddress  string
	HostnameOverride string
	Roles            []string
	User             string
	DockerSocket     string
	SSHAgentAuth     bool
	SSHKey           Sensitive // inline private key, when given
	SSHKeyPath       string
	SSHCert          Sensitive // inline certificate, when given
	SSHCertPath      string
}

// Name is how logs and errors name the node: its hostname override, or its
// address.
func (n Node) Name() string {
	if n.HostnameOverride != "" {
		return n.HostnameOverride
	}
	return n.Address
}

// HasRole reports whether the node has role r.
func (n Node) HasRole(r string) bool { return slices.Contains(n.Roles, r) }

// Bastion is RKE's bastion_host: the jump host for SSH to the nodes.
type Bastion struct {
	Address      string
	Port         int
	User         string
	SSHAgentAuth bool
	SSHKey       Sensitive
	SSHKeyPath   string
	SSHCert      Sensitive
	SSHCertPath  string
}

// KubeAPI is the part of services.kube-api that shapes the kube-apiserver
// container atrest changes. Values are strings as RKE reads them: a number
// or boolean in cluster.yml is its text ("v: 4" is "4").
type KubeAPI struct {
	ExtraArgs      map[string]string
	ExtraArgsArray map[string][]string
	ExtraBinds     []string
}

// ControlPlaneNodes returns the nodes with the controlplane role, in file order.
func (c *Config) ControlPlaneNodes() []Node {
	var out []Node
	for _, n := range c.Nodes {
		if n.HasRole(RoleControlPlane) {
			out = append(out, n)
		}
	}
	return out
}

// ProviderFilePath is where kube-apiserver's encryption provider config lives
// on each controlplane node, under prefix_path when it is set.
func (c *Config) ProviderFilePath() string {
	return path.Join("/", c.PrefixPath, "etc/kubernetes/ssl/encryption.yaml")
}

// Sensitive is a string that must never be shown: an inline SSH key or
// certificate. It prints as [REDACTED].
type Sensitive string

func (Sensitive) String() string   { return redacted }
func (Sensitive) GoString() string { return redacted }

// MarshalText keeps the value out of JSON and YAML output.
func (Sensitive) MarshalText() ([]byte, error) { return []byte(redacted), nil }

const redacted = "[REDACTED]"

// The YAML keys RKE defines. Keys outside these lists are errors: a typo such
// as `secrets_encryption_confg` would otherwise read as "encryption
// disabled", and atrest would decrypt a production cluster.
var (
	topLevelKeys = []string{
		"nodes", "services", "network", "authentication", "addons", "addons_include",
		"system_images", "ssh_key_path", "ssh_cert_path", "ssh_agent_auth", "authorization",
		"ignore_docker_version", "enable_cri_dockerd", "kubernetes_version", "private_registries",
		"ingress", "cluster_name", "cloud_provider", "prefix_path", "win_prefix_path",
		"addon_job_timeout", "bastion_host", "monitoring", "restore", "rotate_certificates",
		"rotate_encryption_key", "dns", "upgrade_strategy", "cri_dockerd_stream_server_address",
		"cri_dockerd_stream_server_port", "enable_network_policy", "default_pod_security_policy_template_id",
		"local_cluster_auth_endpoint", "docker_root_dir",
	}
	nodeKeys = []string{
		"nodeName", "address", "port", "internal_address", "role", "hostname_override", "user",
		"docker_socket", "ssh_agent_auth", "ssh_key", "ssh_key_path", "ssh_cert", "ssh_cert_path",
		"labels", "taints",
	}
	bastionKeys = []string{
		"address", "port", "user", "ssh_agent_auth", "ssh_key", "ssh_key_path", "ssh_cert",
		"ssh_cert_path", "ignore_proxy_env_vars",
	}
	servicesKeys = []string{"etcd", "kube-api", "kube-controller", "scheduler", "kubelet", "kubeproxy"}
	kubeAPIKeys  = []string{
		"image", "extra_args", "extra_args_array", "extra_binds", "extra_env", "win_extra_args",
		"win_extra_args_array", "win_extra_binds", "win_extra_env", "service_cluster_ip_range",
		"service_node_port_range", "pod_security_policy", "pod_security_configuration",
		"always_pull_images", "secrets_encryption_config", "audit_log", "admission_configuration",
		"event_rate_limit",
	}
	encryptionKeys = []string{"enabled", "custom_config"}
)

// rawConfig mirrors the modelled part of cluster.yml for decoding, with
// RKE's types: see rkeyaml.go for why it is decoded twice.
type rawConfig struct {
	ClusterName         rkeString   `json:"cluster_name" yaml:"cluster_name"`
	Nodes               []rawNode   `json:"nodes" yaml:"nodes"`
	SSHKeyPath          rkeString   `json:"ssh_key_path" yaml:"ssh_key_path"`
	SSHCertPath         rkeString   `json:"ssh_cert_path" yaml:"ssh_cert_path"`
	SSHAgentAuth        bool        `json:"ssh_agent_auth" yaml:"ssh_agent_auth"`
	BastionHost         *rawBastion `json:"bastion_host" yaml:"bastion_host"`
	PrefixPath          rkeString   `json:"prefix_path" yaml:"prefix_path"`
	RotateEncryptionKey bool        `json:"rotate_encryption_key" yaml:"rotate_encryption_key"`
	Services            struct {
		Etcd struct {
			rkeService `yaml:",inline"`
			Path       rkeString `json:"path" yaml:"path"`
		} `json:"etcd" yaml:"etcd"`
		KubeAPI struct {
			rkeService `yaml:",inline"`
			// custom_config is decoded on its own, as kube-apiserver
			// decodes it (RKE does the same).
			SecretsEncryptionConfig *struct {
				Enabled      bool            `json:"enabled" yaml:"enabled"`
				CustomConfig json.RawMessage `json:"custom_config" yaml:"-"`
			} `json:"secrets_encryption_config" yaml:"secrets_encryption_config"`
		} `json:"kube-api" yaml:"kube-api"`
		KubeController rkeService `json:"kube-controller" yaml:"kube-controller"`
		Scheduler      rkeService `json:"scheduler" yaml:"scheduler"`
		Kubelet        rkeService `json:"kubelet" yaml:"kubelet"`
		Kubeproxy      rkeService `json:"kubeproxy" yaml:"kubeproxy"`
	} `json:"services" yaml:"services"`
}

type rawNode struct {
	Address          rkeString `json:"address" yaml:"address"`
	Port             port      `json:"port" yaml:"port"`
	InternalAddress  rkeString `json:"internal_address" yaml:"internal_address"`
	Role             rkeList   `json:"role" yaml:"role"`
	HostnameOverride rkeString `json:"hostname_override" yaml:"hostname_override"`
	User             rkeString `json:"user" yaml:"user"`
	DockerSocket     rkeString `json:"docker_socket" yaml:"docker_socket"`
	SSHAgentAuth     bool      `json:"ssh_agent_auth" yaml:"ssh_agent_auth"`
	SSHKey           rkeSecret `json:"ssh_key" yaml:"ssh_key"`
	SSHKeyPath       rkeString `json:"ssh_key_path" yaml:"ssh_key_path"`
	SSHCert          rkeSecret `json:"ssh_cert" yaml:"ssh_cert"`
	SSHCertPath      rkeString `json:"ssh_cert_path" yaml:"ssh_cert_path"`
}

type rawBastion struct {
	Address      rkeString `json:"address" yaml:"address"`
	Port         port      `json:"port" yaml:"port"`
	User         rkeString `json:"user" yaml:"user"`
	SSHAgentAuth bool      `json:"ssh_agent_auth" yaml:"ssh_agent_auth"`
	SSHKey       rkeSecret `json:"ssh_key" yaml:"ssh_key"`
	SSHKeyPath   rkeString `json:"ssh_key_path" yaml:"ssh_key_path"`
	SSHCert      rkeSecret `json:"ssh_cert" yaml:"ssh_cert"`
	SSHCertPath  rkeString `json:"ssh_cert_path" yaml:"ssh_cert_path"`
}

// port accepts RKE's port as a YAML number or string ("22" and 22 both
// occur in real files). Zero means "not set".
type port int

func (p *port) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*p = 0
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return &json.UnmarshalTypeError{Value: "string " + strconv.Quote(s), Type: portType}
	}
	*p = port(n)
	return nil
}

// UnmarshalYAML reads the port as UnmarshalJSON does, so that both decodes
// agree on it.
func (p *port) UnmarshalYAML(unmarshal func(any) error) error {
	var v any
	if err := unmarshal(&v); err != nil {
		return err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("a port must be a whole number")
	}
	return p.UnmarshalJSON(b)
}

var portType = reflect.TypeFor[int]()

// Load reads and parses cluster.yml at file. See Parse.
func Load(file string) (*Config, error) {
	data, err := readCapped(file)
	if err != nil {
		return nil, err
	}
	return Parse(file, data)
}

func readCapped(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if st.IsDir() {
		return nil, &FieldError{File: file, Detail: "is a directory, not a file"}
	}
	if st.Size() > MaxFileSize {
		return nil, &FieldError{File: file, Detail: fmt.Sprintf("file is %d bytes, larger than the %d bytes allowed", st.Size(), MaxFileSize)}
	}
	data := make([]byte, st.Size())
	if _, err := f.ReadAt(data, 0); err != nil && st.Size() > 0 {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	return data, nil
}

// Parse parses an RKE cluster.yml and derives the desired encryption state.
// file names the file in errors. Every problem found is returned at once, as
// Errors; a nil error means the file is safe to act on.
func Parse(file string, data []byte) (*Config, error) {
	l := &errorList{file: file}
	j := yamlToJSON(data, l)
	if j == nil {
		return nil, l.errs
	}
	top := checkKeys(j, "", topLevelKeys, l)
	if svc := checkKeys(top["services"], "services", servicesKeys, l); svc != nil {
		if api := checkKeys(svc["kube-api"], "services.kube-api", kubeAPIKeys, l); api != nil {
			checkKeys(api["secrets_encryption_config"], "services.kube-api.secrets_encryption_config", encryptionKeys, l)
		}
	}
	if nodes, ok := top["nodes"]; ok {
		var list []json.RawMessage
		if json.Unmarshal(nodes, &list) == nil {
			for i, n := range list {
				checkKeys(n, fmt.Sprintf("nodes[%d]", i), nodeKeys, l)
			}
		}
	}
	checkKeys(top["bastion_host"], "bastion_host", bastionKeys, l)

	// The JSON decode reports wrong types by their YAML path; the values are
	// RKE's (decodeAsRKE), but for custom_config, which only the JSON
	// decode keeps.
	var checked, raw rawConfig
	if !decodeJSON(j, &checked, "", l) || !decodeAsRKE(data, &raw, l) {
		return nil, l.errs
	}
	cfg := &Config{
		ClusterName:         string(raw.ClusterName),
		PrefixPath:          string(raw.PrefixPath),
		RotateEncryptionKey: raw.RotateEncryptionKey,
		EtcdPath:            string(raw.Services.Etcd.Path),
		KubeAPI: KubeAPI{
			ExtraArgs:      raw.Services.KubeAPI.ExtraArgs,
			ExtraArgsArray: raw.Services.KubeAPI.ExtraArgsArray,
			ExtraBinds:     raw.Services.KubeAPI.ExtraBinds,
		},
	}
	cfg.Nodes = resolveNodes(&raw, l)
	cfg.BastionHost = resolveBastion(raw.BastionHost, l)
	if cfg.PrefixPath != "" && !path.IsAbs(cfg.PrefixPath) {
		l.add("prefix_path", "must be an absolute path (for example /opt/rke)")
	}
	checkKubeAPI(cfg.KubeAPI, l)

	enc := checked.Services.KubeAPI.SecretsEncryptionConfig
	switch {
	case enc == nil || !enc.Enabled:
		// RKE ignores custom_config while encryption is disabled.
		cfg.Desired = Desired{Mode: Disabled}
	case len(enc.CustomConfig) == 0 || string(enc.CustomConfig) == "null":
		cfg.Desired = Desired{Mode: Managed}
	default:
		custom, errs := parseCustom(enc.CustomConfig, file, customConfigPath, cfg.KubeAPI.ExtraArgs)
		l.addAll(errs)
		cfg.Desired = Desired{Mode: Custom, Custom: custom}
	}
	if len(l.errs) > 0 {
		return nil, l.errs
	}
	return cfg, nil
}

const customConfigPath = "services.kube-api.secrets_encryption_config.custom_config"

func resolveNodes(raw *rawConfig, l *errorList) []Node {
	nodes := make([]Node, 0, len(raw.Nodes))
	seen := map[string]int{}
	controlplanes := 0
	for i, rn := range raw.Nodes {
		p := fmt.Sprintf("nodes[%d]", i)
		n := Node{
			Address:          string(rn.Address),
			Port:             int(rn.Port),
			InternalAddress:  string(rn.InternalAddress),
			HostnameOverride: string(rn.HostnameOverride),
			Roles:            rn.Role,
			User:             string(rn.User),
			DockerSocket:     firstNonEmpty(rn.DockerSocket, DefaultDockerSocket),
			SSHAgentAuth:     rn.SSHAgentAuth || raw.SSHAgentAuth,
			SSHKey:           Sensitive(rn.SSHKey),
			SSHKeyPath:       firstNonEmpty(rn.SSHKeyPath, raw.SSHKeyPath, DefaultSSHKeyPath),
			SSHCert:          Sensitive(rn.SSHCert),
			SSHCertPath:      firstNonEmpty(rn.SSHCertPath, raw.SSHCertPath),
		}
		if n.Port == 0 {
			n.Port = DefaultSSHPort
		}
		if n.Address == "" {
			l.add(p+".address", "required: the IP or DNS name atrest reaches the node's SSH server at")
		} else if j, dup := seen[n.Address]; dup {
			l.add(p+".address", "%q is also the address of nodes[%d]; every node needs its own", n.Address, j)
		} else {
			seen[n.Address] = i
		}
		if n.Port < 1 || n.Port > 65535 {
			l.add(p+".port", "must be between 1 and 65535, not %d", n.Port)
		}
		if len(n.Roles) == 0 {
			l.add(p+".role", "required: a list of controlplane, etcd and worker")
		}
		for k, r := range n.Roles {
			if r != RoleControlPlane && r != RoleEtcd && r != RoleWorker {
				l.add(fmt.Sprintf("%s.role[%d]", p, k), "%q is not a role: use controlplane, etcd or worker", r)
			}
		}
		if n.HasRole(RoleControlPlane) {
			controlplanes++
			if n.User == "" {
				l.add(p+".user", "required: the SSH user atrest logs in as (a member of the docker group on the node)")
			}
			if !path.IsAbs(n.DockerSocket) {
				l.add(p+".docker_socket", "must be an absolute path to the Docker socket on the node")
			}
		}
		nodes = append(nodes, n)
	}
	if controlplanes == 0 {
		l.add("nodes", "no node has the controlplane role: atrest needs at least one to deploy the encryption config to")
	}
	return nodes
}

func resolveBastion(rb *rawBastion, l *errorList) *Bastion {
	if rb == nil || rb.Address == "" {
		if rb != nil && (rb.User != "" || rb.Port != 0) {
			l.add("bastion_host.address", "required when bastion_host is set")
		}
		return nil
	}
	b := &Bastion{
		Address:      string(rb.Address),
		Port:         int(rb.Port),
		User:         string(rb.User),
		SSHAgentAuth: rb.SSHAgentAuth,
		SSHKey:       Sensitive(rb.SSHKey),
		SSHKeyPath:   firstNonEmpty(rb.SSHKeyPath, DefaultSSHKeyPath),
		SSHCert:      Sensitive(rb.SSHCert),
		SSHCertPath:  string(rb.SSHCertPath),
	}
	if b.Port == 0 {
		b.Port = DefaultSSHPort
	}
	if b.Port < 1 || b.Port > 65535 {
		l.add("bastion_host.port", "must be between 1 and 65535, not %d", b.Port)
	}
	if b.User == "" {
		l.add("bastion_host.user", "required: the SSH user on the bastion host")
	}
	return b
}

// FlagAutomaticReload is the kube-apiserver flag that reloads the provider
// file without a restart.
const FlagAutomaticReload = "encryption-provider-config-automatic-reload"

// AutomaticReload is what services.kube-api.extra_args says of
// --encryption-provider-config-automatic-reload: set says whether it is
// there at all, on whether it is true. `rke up` recreates kube-apiserver
// with exactly the flags cluster.yml gives, so a flag atrest set and
// cluster.yml lacks is gone after the next `rke up`.
func (c *Config) AutomaticReload() (on, set bool) {
	v, ok := c.KubeAPI.ExtraArgs[FlagAutomaticReload]
	if !ok {
		return false, false
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	return err == nil && b, true
}

// ReloadAdvice is what an operator should add to cluster.yml so that
// provider files keep reloading without restarts after `rke up`; "" when
// nothing is to add.
func (c *Config) ReloadAdvice() string {
	switch on, set := c.AutomaticReload(); {
	case on:
		return ""
	case set:
		return "services.kube-api.extra_args." + FlagAutomaticReload + " is not \"true\": atrest keeps every node on the restart path, and restarts each kube-apiserver for every provider file"
	}
	return "add " + FlagAutomaticReload + `: "true" to services.kube-api.extra_args: atrest sets the flag at its first change to a node (that change restarts kube-apiserver, later ones reload without a restart), and ` + "`rke up`" + ` drops it unless cluster.yml has it`
}

// flagsAtrestOwns are kube-apiserver flags that atrest sets itself; setting
// them in extra_args as well would make the two fight.
var flagsAtrestOwns = []string{"encryption-provider-config"}

func checkKubeAPI(k KubeAPI, l *errorList) {
	for _, f := range flagsAtrestOwns {
		if _, ok := k.ExtraArgs[f]; ok {
			l.add("services.kube-api.extra_args."+f, "is managed by atrest from secrets_encryption_config; remove it from extra_args")
		}
		// RKE adds every extra_args_array value as one more flag.
		if _, ok := k.ExtraArgsArray[f]; ok {
			l.add("services.kube-api.extra_args_array."+f, "is managed by atrest from secrets_encryption_config; remove it from extra_args_array")
		}
	}
}

func firstNonEmpty[S ~string](s ...S) string {
	for _, v := range s {
		if v != "" {
			return string(v)
		}
	}
	return ""
}

// Summary describes the config in one line, without key material: the
// cluster, its controlplane nodes and the desired encryption state.
func (c *Config) Summary() string {
	var names []string
	for _, n := range c.ControlPlaneNodes() {
		names = append(names, n.Name())
	}
	name := c.ClusterName
	if name == "" {
		name = "(unnamed)"
	}
	s := fmt.Sprintf("cluster %q, %d controlplane node(s) (%s), encryption %s", name, len(names), strings.Join(names, ", "), c.Desired.Mode)
	if c.Desired.Mode == Custom {
		s += " (" + strings.Join(c.Desired.Custom.Providers(), "; ") + ")"
	}
	if c.RotateEncryptionKey {
		s += ", key rotation requested"
	}
	return s
}
