package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/kubernetes"

	"github.com/atrest-io/atrest/cluster"
	"github.com/atrest-io/atrest/daemon"
	"github.com/atrest-io/atrest/sandbox"
)

// options configures one run of the tour.
type options struct {
	dir           string // the tour's directory: the sandbox in dir/sandbox, the daemon's log beside it
	atrest        string // the atrest binary
	kubeAPIServer string // for the sandbox; empty: $ATREST_KUBE_APISERVER
	vault         string // for the sandbox; empty: $ATREST_VAULT
	pause         bool   // wait for Enter between steps
	secrets       int    // how many example secrets to create
	stepTimeout   time.Duration

	out io.Writer
	in  io.Reader
	// hurry is closed on a second Ctrl-C: the daemon's step in flight is
	// interrupted rather than waited for.
	hurry <-chan struct{}
	// beforeTeardown, when set, runs after the last step while the sandbox
	// is still up (the test reads the keys from Vault there).
	beforeTeardown func(context.Context, *sandbox.Sandbox) error
}

// totalSteps is how many numbered steps the tour has.
const totalSteps = 6

// The secrets_encryption_config blocks the tour commits.
const (
	disabledBlock = "    secrets_encryption_config:\n      enabled: false\n"
	enabledBlock  = "    secrets_encryption_config:\n      enabled: true\n"
)

// tour is one run: what it started, and what it saw.
type tour struct {
	o        options
	out      io.Writer
	dir      string
	sb       *sandbox.Sandbox
	etcd     *clientv3.Client
	kc       kubernetes.Interface
	d        *daemonProc
	cliEnv   []string // the environment of the atrest commands shown
	logFile  string
	started  time.Time
	stdin    chan string
	yml      map[string]string // cluster.yml as committed at each stage
	snapshot string            // the snapshot step 4 restores
	narrated string            // the daemon's last line shown
}

// run runs the whole tour, and always tears down what it started.
func run(ctx context.Context, o options) error {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	t := &tour{o: o, out: o.out, dir: dir, started: time.Now(), yml: map[string]string{},
		logFile: filepath.Join(dir, "atrest-run.log")}
	err = t.steps(ctx)
	if err == nil && t.o.beforeTeardown != nil {
		err = t.o.beforeTeardown(ctx, t.sb)
	}
	if err != nil && t.d != nil {
		if done, exitErr := t.d.exited(); done {
			t.printf("\natrest run exited early (%v). ", exitErr)
		}
		if ctx.Err() == nil {
			t.printf("\nThe last lines of the daemon's log (%s):\n%s", t.rel(t.logFile), indent(t.d.tail(40), "  | "))
		}
	}
	return errors.Join(err, t.teardown(err))
}

// cleanupError is a failure to stop what the tour started: unlike a step's
// failure, it may leave something behind.
type cleanupError struct{ err error }

func (e *cleanupError) Error() string { return "cleanup: " + e.err.Error() }
func (e *cleanupError) Unwrap() error { return e.err }

func (t *tour) steps(ctx context.Context) error {
	if err := t.setup(ctx); err != nil {
		return err
	}
	for i, step := range []struct {
		title string
		fn    func(context.Context) error
	}{
		{"the cluster as it is", t.status},
		{"enable encryption at rest, the GitOps way", t.enable},
		{"rotate the key", t.rotate},
		{"snapshots, and restoring one", t.snapshots},
		{"disable encryption at rest", t.disable},
	} {
		if err := t.pauseBefore(ctx, fmt.Sprintf("Step %d: %s", i+1, step.title)); err != nil {
			return err
		}
		t.header(i+1, step.title)
		if err := step.fn(ctx); err != nil {
			return fmt.Errorf("step %d (%s): %w", i+1, step.title, err)
		}
	}
	return t.pauseBefore(ctx, fmt.Sprintf("Step %d: stop the daemon and remove the sandbox", totalSteps))
}

// setup starts the sandbox, creates the example secrets and starts the
// daemon.
func (t *tour) setup(ctx context.Context) error {
	atrest, err := findAtrest(t.o.atrest)
	if err != nil {
		return err
	}
	t.o.atrest = atrest
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return fmt.Errorf("create the tour's directory %s: %w", t.dir, err)
	}
	t.printf("atrest: the guided tour\n=======================\n")
	t.say(`atrest keeps a Kubernetes cluster's encryption at rest equal to what the
		cluster's RKE cluster.yml in Git says, keeps every key in HashiCorp Vault,
		and saves a verified etcd snapshot before it changes anything.`)
	t.say(fmt.Sprintf(`This tour runs on a sandbox: a small but real RKE-style cluster on this
		machine, on loopback addresses only. etcd; one controlplane node with its own
		sshd and dockerd, running kube-apiserver in a Docker container named
		kube-apiserver, as RKE does; Vault, for the keys; and a Git server holding the
		cluster's cluster.yml. Nothing outside this machine is touched. It lives in
		%s and is stopped and removed at the end, or when you press Ctrl-C.`, t.rel(filepath.Join(t.dir, "sandbox"))))

	t.sub("Starting the sandbox (this takes up to a minute)")
	sbDir := filepath.Join(t.dir, "sandbox")
	if _, err := os.Stat(filepath.Join(sbDir, "sandbox.json")); err == nil {
		t.printf("  an earlier tour left a sandbox in %s: stopping and removing it first\n", t.rel(sbDir))
	}
	t.sb, err = sandbox.Start(ctx, sandbox.Options{Dir: sbDir, Nodes: 1, KubeAPIServer: t.o.kubeAPIServer, Vault: t.o.vault,
		Log: &prefixWriter{w: t.out, prefix: "  | "}})
	if err != nil {
		return fmt.Errorf("start the sandbox in %s: %w", t.rel(sbDir), err)
	}
	t.printf("\n%s", indent(t.sb.Summary(), "  "))
	base, err := os.ReadFile(t.sb.ClusterYML)
	if err != nil {
		return fmt.Errorf("read the sandbox's cluster.yml: %w", err)
	}
	t.yml["disabled"] = string(base)
	if !strings.Contains(t.yml["disabled"], disabledBlock) {
		return fmt.Errorf("the sandbox's cluster.yml (%s) has no %q block: the tour does not match the sandbox any more", t.sb.ClusterYML, disabledBlock)
	}
	if t.etcd, err = t.sb.EtcdClient(); err != nil {
		return err
	}
	if t.kc, err = kubeClient(t.sb.Kubeconfig); err != nil {
		return err
	}

	t.sub(fmt.Sprintf("Creating %d example secrets", t.o.secrets))
	t.say(fmt.Sprintf(`Through kube-apiserver, as any application would (client-go), in the
		namespaces %s. Each holds a made-up password.`, strings.Join(demoNamespaces, ", ")))
	if err := createSecrets(ctx, t.kc, t.o.secrets); err != nil {
		return err
	}
	c, err := storedSecrets(ctx, t.etcd)
	if err != nil {
		return err
	}
	t.printf("  etcd now holds %d secrets: %s\n", c.total(), c)

	t.sub("Starting the daemon: atrest run")
	t.say(`atrest run is the GitOps loop, as it runs in the cluster (the Helm chart) or
		on an admin host. Every few seconds it polls the Git repository and looks at
		the cluster: what each controlplane node runs, how etcd stores the secrets,
		and which keys Vault holds. When they differ from cluster.yml, it acts. It
		also listens for a push webhook, so a commit is picked up at once.`)
	// The commands shown below read the sandbox's settings from the
	// environment, and keep their own Git cache: the daemon owns its own.
	t.cliEnv = childEnv(os.Environ(), "ATREST_SETTINGS="+t.sb.SettingsFile,
		"ATREST_GIT_CACHE_DIR="+filepath.Join(t.sb.Dir, "cli-git-cache"))
	t.d, err = startDaemon(t.o.atrest, t.sb.SettingsFile, t.sb.MetricsAddress(), filepath.Join(t.sb.Dir, "webhook-secret"), t.logFile, childEnv(os.Environ()))
	if err != nil {
		return err
	}
	t.printf("  $ %s %s\n", t.rel(t.o.atrest), strings.Join(t.relArgs(t.d.args), " "))
	t.printf("  pid %d; its log: %s; metrics: %s/metrics; webhook: %s\n", t.d.pid(), t.rel(t.logFile), t.d.metricsURL, t.d.webhookURL)
	if err := t.d.waitReady(ctx, 2*time.Minute); err != nil {
		return err
	}
	t.narrate()
	t.printf("  ready: its first look at the cluster is done.\n")
	if t.sb.Vault.PlainHTTP() {
		t.say(`The sandbox's Vault listens on plain http. atrest refuses an http:// Vault
			(and VAULT_SKIP_VERIFY, http etcd endpoints, a kubeconfig that skips TLS
			verification) unless a DANGEROUS setting allows it by name: the sandbox's
			settings set vault.insecureAllowHTTP, so atrest warns, above, at every start.
			Never in production.`)
	}
	t.say(fmt.Sprintf(`The atrest commands below run with ATREST_SETTINGS=%s in their
		environment: the sandbox's runtime settings (how to reach Git, Vault, etcd,
		the nodes).`, t.rel(t.sb.SettingsFile)))
	return nil
}

// status is step 1.
func (t *tour) status(ctx context.Context) error {
	t.say(`atrest status asks the controlplane node (over SSH, then its Docker engine)
		which encryption config kube-apiserver runs, counts how etcd stores every
		secret (the census), and lists the keys in Vault. Names, counts and
		fingerprints only: atrest never prints key material.`)
	if _, err := t.atrest(ctx, true, "status"); err != nil {
		return err
	}
	c, err := storedSecrets(ctx, t.etcd)
	if err != nil {
		return err
	}
	t.printf("\n  Read straight from etcd, not through atrest: %s.\n", c)
	if err := t.peek(ctx); err != nil {
		return err
	}
	t.say(`Encryption at rest is off: anyone who can read etcd, or a copy of an etcd
		snapshot, reads every password.`)
	return nil
}

// enable is step 2.
func (t *tour) enable(ctx context.Context) error {
	t.say(`An operator turns encryption on the RKE way: enabled: true under
		services.kube-api.secrets_encryption_config in cluster.yml, committed and
		pushed. There is no rke up to run: atrest run sees the commit. It then saves
		a verified etcd snapshot, generates a new aescbc key in Vault, deploys it to
		the node first as a reader and then as the writer (restarting
		kube-apiserver each time, and checking with a canary secret), rewrites every
		secret so that it is stored encrypted, and checks with the census that none
		is left in plain text.`)
	t.yml["enabled"] = strings.Replace(t.yml["disabled"], disabledBlock, enabledBlock, 1)
	return t.transition(ctx, "Enable encryption at rest", t.yml["enabled"], "enable",
		func(p string) bool { return encrypted(p) })
}

// rotate is step 3.
func (t *tour) rotate(ctx context.Context) error {
	t.say(`Keys should not live forever. RKE users rotate with rke encrypt rotate-key,
		or with rotate_encryption_key: true in cluster.yml; atrest honours that same
		line, the GitOps way: the commit that adds it rotates once (a later commit
		that keeps the line does not rotate again). atrest.yaml can also rotate on a
		cron schedule.`)
	t.say(`A rotation goes [old, new] -> [new, old] -> rewrite -> [new]: the node learns
		to read the new key before anything is written with it, every secret is
		rewritten with the new key, and only then is the old one dropped from the
		node. It stays in Vault: the snapshot taken before the rotation needs it.`)
	before, err := storedSecrets(ctx, t.etcd)
	if err != nil {
		return err
	}
	old, _ := before.only()
	t.yml["rotate"] = addRotateLine(t.yml["enabled"])
	if err := t.transition(ctx, "Rotate the encryption key", t.yml["rotate"], "rotate",
		func(p string) bool { return encrypted(p) && p != old }); err != nil {
		return err
	}
	return t.keyring(ctx, `primary: the key kube-apiserver writes with. retired: no
		longer on any node and no secret is stored under it, but kept in Vault while
		a snapshot that needs it is kept.`)
}

// rotateLine is RKE's cluster.yml request for one rotation.
const rotateLine = "rotate_encryption_key: true\n"

var clusterNameLine = regexp.MustCompile(`(?m)^cluster_name:.*\n`)

// addRotateLine adds rotate_encryption_key: true to a cluster.yml, after
// cluster_name as people write it, else at the end.
func addRotateLine(yml string) string {
	if loc := clusterNameLine.FindStringIndex(yml); loc != nil {
		return yml[:loc[1]] + rotateLine + yml[loc[1]:]
	}
	if !strings.HasSuffix(yml, "\n") {
		yml += "\n"
	}
	return yml + rotateLine
}

// snapshots is step 4.
func (t *tour) snapshots(ctx context.Context) error {
	t.say(`Before each change atrest saved an etcd snapshot, checked its sha256 against
		etcd's own, and wrote a manifest naming the keys that can read it. Those keys
		stay in Vault for as long as the snapshot is kept, even after a rotation
		retires them.`)
	list, err := t.atrest(ctx, true, "snapshot", "list")
	if err != nil {
		return err
	}
	t.snapshot = pickSnapshot(list, "before rotate")
	if t.snapshot == "" {
		return fmt.Errorf("atrest snapshot list shows no snapshot:\n%s", list)
	}
	t.say(fmt.Sprintf(`Take %s, saved before the rotation: the secrets in it are encrypted with
		the first key, which no node has any more. First check that the file is
		intact:`, t.snapshot))
	if _, err := t.atrest(ctx, true, "snapshot", "verify", t.snapshot); err != nil {
		return err
	}
	t.say(`Intact is not enough: prove it can be read today. The drill opens the file
		offline and decrypts every secret in it with the keys Vault holds now,
		through kube-apiserver's own code. The daemon does this for every kept
		snapshot each day, and stops changing anything the day one fails:`)
	if _, err := t.atrest(ctx, true, "snapshot", "verify", "--decrypt", t.snapshot); err != nil {
		return err
	}
	restoreDir := filepath.Join(t.sb.Dir, "restore")
	if err := os.MkdirAll(restoreDir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", restoreDir, err)
	}
	file := filepath.Join(restoreDir, "encryption.yaml")
	t.say(`Then ask for its restore config: an EncryptionConfiguration with every key
		the snapshot needs (fetched from Vault) plus identity. atrest prints the steps
		that use it:`)
	if _, err := t.atrest(ctx, true, "snapshot", "restore-config", t.snapshot, "--out", file); err != nil {
		return err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read the restore config %s: %w", file, err)
	}
	cfg, err := cluster.ParseEncryptionConfig(file, filepath.Dir(file), data, "")
	if err != nil {
		return fmt.Errorf("the restore config %s does not validate: %w", file, err)
	}
	shown, err := redactConfig(data, cfg.Keys())
	if err != nil {
		return err
	}
	st, err := os.Stat(file)
	if err != nil {
		return err
	}
	t.printf("\n  The file %s (mode %04o), with the key material hidden here:\n%s", t.rel(file), st.Mode().Perm(), indent(shown, "  | "))
	t.say(`What an operator does with it, when etcd is lost and this snapshot must be
		restored:`)
	t.list(
		`Verify the snapshot (atrest snapshot verify), and write its restore config
		(atrest snapshot restore-config) somewhere safe: the file holds keys, like
		the cluster's certificates.`,
		`Restore etcd from the snapshot: rke etcd snapshot-restore with the file as
		the custom_config of a local copy of cluster.yml (not the one in Git), or
		etcdutl snapshot restore by hand, as printed above.`,
		`Make every kube-apiserver start on the restored data with that file as
		/etc/kubernetes/ssl/encryption.yaml: with it, it reads every secret the
		snapshot holds, whatever was rotated or disabled since.`,
		`Delete the file, and point atrest at the cluster again: it converges to what
		Git says, rewriting the secrets to the current key and retiring the old ones.`,
	)
	t.say(`Without it, this is the failure RKE's documentation warns about: after a
		rotation, the old key is gone from cluster.rkestate, and a snapshot taken
		before it can no longer be read.`)
	return nil
}

// pickSnapshot returns the name of the first snapshot in `atrest snapshot
// list` output whose line mentions reason, else the last listed (the oldest:
// the list is newest first); "" when none.
func pickSnapshot(list, reason string) string {
	var names []string
	for line := range strings.SplitSeq(list, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if strings.Contains(line, reason) {
			return f[0]
		}
		names = append(names, f[0])
	}
	if len(names) == 0 {
		return ""
	}
	return names[len(names)-1]
}

// disable is step 5.
func (t *tour) disable(ctx context.Context) error {
	t.say(`Turning encryption off is the same kind of commit: enabled: false (and the
		rotate_encryption_key line goes too). atrest snapshots etcd, makes identity
		the writer while the node can still read the key, rewrites every secret in
		plain text, checks the census, and only then removes the provider file and
		kube-apiserver's flag.`)
	if err := t.transition(ctx, "Disable encryption at rest", t.yml["disabled"], "disable",
		func(p string) bool { return p == "identity" }); err != nil {
		return err
	}
	if err := t.keyring(ctx, `Every key is retired now, and stays in Vault while the
		snapshots that need it are kept (atrest.yaml's snapshots.retention).`); err != nil {
		return err
	}
	t.say(`And atrest status, as at the start:`)
	_, err := t.atrest(ctx, true, "status")
	return err
}

// transition commits cluster.yml, pings the webhook, and waits until the
// census shows every secret under a prefix ok accepts and the daemon says
// the transition for that commit is complete. It shows the evidence.
func (t *tour) transition(ctx context.Context, message, yml, name string, ok func(prefix string) bool) error {
	before, err := storedSecrets(ctx, t.etcd)
	if err != nil {
		return err
	}
	t.sub("The commit")
	rev, err := t.sb.Commit(ctx, message, map[string]string{"cluster.yml": yml})
	if err != nil {
		return fmt.Errorf("commit to the sandbox's Git repository: %w", err)
	}
	show, _, err := command(ctx, 30*time.Second, nil, "git", "--git-dir", t.sb.Git.Bare, "show", "--no-color",
		"--format=commit %H%nAuthor: %an <%ae>%nDate:   %ad%n%n    %s%n", rev)
	if err != nil {
		return err
	}
	t.printf("  $ git show %s        (in the sandbox's repository, %s)\n%s", short(rev), t.rel(t.sb.Git.Bare), indent(show, "  | "))

	t.sub("The push webhook")
	body := fmt.Sprintf(`{"ref":"refs/heads/main","after":%q}`, rev)
	t.printf("  POST %s\n  %s: %s\n  %s\n", t.d.webhookURL, daemon.HeaderGitHubSignature,
		daemon.Sign(t.d.secret, []byte(body)), body)
	status, err := t.d.webhook(ctx, rev)
	if err != nil {
		return err
	}
	t.printf("  -> %s: atrest run polls Git now instead of at its next interval.\n", status)
	t.say(`The signature is the HMAC-SHA256 of the body with the secret shared with
		the daemon, as GitHub, Gitea or GitLab send it; an unsigned or wrongly signed
		request is refused.`)

	t.sub(fmt.Sprintf("atrest run at work (%s)", name))
	t.printf("  what the daemon logs, and the census of secrets read from etcd every second\n")
	after, took, err := t.converge(ctx, rev, name, before, ok)
	if err != nil {
		return err
	}
	t.sub("The evidence")
	t.printf("  before: %s\n  after:  %s\n", before, after)
	if others, err := otherSecrets(ctx, t.etcd, t.o.secrets); err == nil && len(others) > 0 {
		t.printf("  (every secret in etcd: the %d examples, and %s)\n", t.o.secrets, strings.Join(others, ", "))
	}
	t.printf("  converged %s after the push.\n", took.Round(time.Second))
	if err := t.peek(ctx); err != nil {
		return err
	}
	if err := readBack(ctx, t.kc, t.o.secrets); err != nil {
		return err
	}
	t.printf("  All %d example secrets read back through kube-apiserver with their original values.\n", t.o.secrets)
	return nil
}

// converge waits for the transition of rev: every secret under a prefix ok
// accepts, and the daemon's "transition complete" for rev. It narrates
// the daemon's log and every change of the census meanwhile.
func (t *tour) converge(ctx context.Context, rev, name string, before census, ok func(string) bool) (census, time.Duration, error) {
	start := time.Now()
	deadline := start.Add(t.o.stepTimeout)
	last := before
	t.printf("  %-10s | %5s  %s\n", "etcd", "+0s", before)
	for {
		t.narrate()
		if done, err := t.d.exited(); done {
			return nil, 0, fmt.Errorf("atrest run exited during the %s (%v)", name, err)
		}
		if t.d.find(func(l logLine) bool { return strings.HasPrefix(l["msg"], "revision refused") && l["revision"] == rev }) {
			return nil, 0, fmt.Errorf("atrest run refused commit %s; see its log", short(rev))
		}
		c, err := storedSecrets(ctx, t.etcd)
		if err == nil && !maps.Equal(c, last) {
			t.printf("  %-10s | %5s  %s\n", "etcd", "+"+time.Since(start).Round(time.Second).String(), c)
			last = c
		}
		p, one := last.only()
		complete := t.d.find(func(l logLine) bool { return l["msg"] == "transition complete" && l["revision"] == rev })
		if err == nil && one && ok(p) && complete {
			return last, time.Since(start), nil
		}
		if time.Now().After(deadline) {
			why := "the census still shows " + last.String()
			if one && ok(p) {
				why = "the census is right, but the daemon has not said the transition is complete"
			}
			return nil, 0, fmt.Errorf("the %s did not converge within %s: %s", name, t.o.stepTimeout, why)
		}
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// keyring shows the keys in Vault, from `atrest status -o json`.
func (t *tour) keyring(ctx context.Context, explain string) error {
	t.sub("The keyring in Vault")
	out, err := t.atrest(ctx, false, "status", "-o", "json")
	if err != nil {
		return err
	}
	st, err := statusJSON(out)
	if err != nil {
		return err
	}
	t.printf("  $ %s status -o json    (its keys: names, roles and fingerprints, never key material)\n", t.rel(t.o.atrest))
	t.printf("  %-10s %-9s %-8s %-21s %s\n", "KEY", "PROVIDER", "ROLE", "CREATED", "FINGERPRINT")
	for _, k := range st.Keys {
		t.printf("  %-10s %-9s %-8s %-21s %s\n", k.Name, k.Provider, k.Role, k.Created.UTC().Format(time.RFC3339), k.Fingerprint)
	}
	t.say(explain)
	return nil
}

// peek shows how etcd stores one example secret, byte for byte.
func (t *tour) peek(ctx context.Context) error {
	ns, name, value := exampleSecret(0)
	key := "/registry/secrets/" + ns + "/" + name
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := t.etcd.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read %s from etcd: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("etcd has no %s", key)
	}
	t.printf("  etcd's value of %s: %s\n", key, describeRaw(resp.Kvs[0].Value, value))
	return nil
}

// describeRaw says what a value stored in etcd shows of plaintext.
func describeRaw(raw, plaintext []byte) string {
	p := cluster.StoragePrefix(raw)
	if encrypted(p) {
		head := "k8s:enc:" + p + ":"
		return fmt.Sprintf("%q + %d bytes of ciphertext; the password is not in it", head, len(raw)-len(head))
	}
	if strings.Contains(string(raw), string(plaintext)) {
		return fmt.Sprintf("%d bytes of plain protobuf, the password %q readable in it", len(raw), plaintext)
	}
	return fmt.Sprintf("%d bytes stored as %s", len(raw), p)
}

// atrest runs an atrest command with the sandbox's settings, shows it and
// (when show) its output, and returns its standard output.
func (t *tour) atrest(ctx context.Context, show bool, args ...string) (string, error) {
	if show {
		t.printf("\n  $ %s %s\n", t.rel(t.o.atrest), strings.Join(t.relArgs(args), " "))
	}
	stdout, stderr, err := command(ctx, 3*time.Minute, t.cliEnv, t.o.atrest, args...)
	if show {
		t.printf("%s", indent(stdout, "  | "))
	}
	if err != nil {
		return stdout, fmt.Errorf("%w\n%s", err, indent(lastLines(stderr, 20), "  | "))
	}
	return stdout, nil
}

// narrate prints what the daemon logged since the last call, the lines a
// newcomer needs.
func (t *tour) narrate() {
	lines, err := t.d.follow()
	if err != nil {
		t.printf("  (%v)\n", err)
		return
	}
	for _, l := range lines {
		if s := narrate(l); s != "" && s != t.narrated {
			// An error may span lines (a cause on the next): keep them together.
			t.printf("  %-10s | %s\n", "atrest run", strings.ReplaceAll(s, "\n", "\n"+strings.Repeat(" ", 15)))
			t.narrated = s
		}
	}
}

// teardown is the last step, and the cleanup after a failure or Ctrl-C:
// stop the daemon, then the sandbox. It runs whatever ctx says. Its error
// is a *cleanupError when something may be left behind, else the last
// step's failure (the daemon did not stop gracefully).
func (t *tour) teardown(failed error) error {
	if failed == nil {
		t.header(totalSteps, "stop the daemon and remove the sandbox")
		t.say(`SIGTERM asks atrest run to stop gracefully: a step in flight would finish
			and be journaled in Vault, the transition lock is released, and it exits.
			(A second signal interrupts the step; the journal records it, and the next
			start resumes it.)`)
	} else {
		t.printf("\n--- cleaning up: stopping what the tour started (Ctrl-C again does not skip this) ---\n")
	}
	if t.etcd != nil {
		_ = t.etcd.Close()
	}
	var stepErr error
	if t.d != nil {
		if done, _ := t.d.exited(); !done {
			t.printf("  stopping atrest run (pid %d) with SIGTERM\n", t.d.pid())
		}
		killed, exitErr := t.d.stop(2*time.Minute, t.o.hurry)
		t.narrate()
		switch {
		case killed:
			stepErr = fmt.Errorf("atrest run (pid %d) did not stop in time and was killed", t.d.pid())
			t.printf("  atrest run (pid %d) did not stop in time: killed with SIGKILL. On a real cluster the\n"+
				"  journal in Vault would let its next start resume; here the sandbox goes anyway.\n", t.d.pid())
		case exitErr != nil:
			stepErr = fmt.Errorf("atrest run (pid %d): %w", t.d.pid(), exitErr)
			t.printf("  atrest run (pid %d) ended: %v\n", t.d.pid(), exitErr)
		default:
			t.printf("  atrest run (pid %d) exited with status 0\n", t.d.pid())
		}
	}
	var cleanupErr error
	if t.sb != nil {
		t.printf("  removing the sandbox in %s (it stops exactly the processes it started)\n", t.rel(t.sb.Dir))
		if err := t.sb.Stop(context.Background()); err != nil {
			cleanupErr = &cleanupError{err}
			t.printf("  %v\n  run it again: go run ./sandbox/cmd/atrest-sandbox down --dir %s\n", err, t.rel(t.sb.Dir))
		} else {
			t.printf("  sandbox removed\n")
		}
	}
	if t.d != nil {
		t.printf("  the daemon's log stays in %s\n", t.rel(t.logFile))
	}
	if failed != nil {
		return cleanupErr
	}
	if err := errors.Join(stepErr, cleanupErr); err != nil {
		return fmt.Errorf("step %d (stop the daemon and remove the sandbox): %w", totalSteps, err)
	}
	t.printf("\nThe tour is over (%s). Thank you for watching.\n", time.Since(t.started).Round(time.Second))
	return nil
}

// pauseBefore waits for Enter when pausing; next names what comes.
func (t *tour) pauseBefore(ctx context.Context, next string) error {
	if !t.o.pause {
		return ctx.Err()
	}
	if t.stdin == nil {
		t.stdin = make(chan string)
		go func() {
			sc := bufio.NewScanner(t.o.in)
			for sc.Scan() {
				t.stdin <- sc.Text()
			}
			close(t.stdin)
		}()
	}
	t.printf("\n[Enter] %s    (Ctrl-C ends the tour and cleans up) ", next)
	select {
	case <-ctx.Done():
		t.printf("\n")
		return ctx.Err()
	case _, ok := <-t.stdin:
		if !ok {
			t.o.pause = false // no more input: run straight through
			t.printf("\n")
		}
		return nil
	}
}

func (t *tour) header(n int, title string) {
	line := fmt.Sprintf("Step %d of %d: %s", n, totalSteps, title)
	t.printf("\n\n%s\n%s\n", line, strings.Repeat("=", len(line)))
}

func (t *tour) sub(title string) { t.printf("\n-- %s\n", title) }

// say prints a paragraph of plain words.
func (t *tour) say(text string) { t.printf("\n%s", wrap(text, "", 78)) }

// list prints numbered items.
func (t *tour) list(items ...string) {
	for i, it := range items {
		w := wrap(it, "     ", 78)
		t.printf("  %d. %s", i+1, strings.TrimPrefix(w, "     "))
	}
}

func (t *tour) printf(format string, args ...any) { fmt.Fprintf(t.out, format, args...) }

// rel shows a path relative to the working directory when it is below it.
func (t *tour) rel(path string) string {
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	if r, err := filepath.Rel(wd, path); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return path
}

func (t *tour) relArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if filepath.IsAbs(a) {
			out[i] = t.rel(a)
		}
	}
	return out
}

// findAtrest resolves the atrest binary, with a clear word when it is missing.
func findAtrest(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("no atrest binary at %s: build it with make build (make demo does), or name it with --atrest", path)
	}
	return abs, nil
}
