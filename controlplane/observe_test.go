package controlplane

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runObserveScript runs the observation script locally, as the node
// would, with PATH set to dir: a fake docker there answers inspect.
func runObserveScript(t *testing.T, file, held, path string) []byte {
	t.Helper()
	cmd := exec.Command("sh", "-c", fmt.Sprintf(observeScript, shellQuote(file), shellQuote(held), containerName))
	cmd.Env = []string{"PATH=" + path}
	out, err := cmd.Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		t.Fatalf("observe script: exit %d: %s", exit.ExitCode(), exit.Stderr)
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestObserveScript: one command reads the file (its bytes only when the
// caller does not hold them) and the container, framed so that no file
// can pass for the container; without docker, the container is left to
// the API.
func TestObserveScript(t *testing.T) {
	needSha256sum(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "encryption.yaml")
	// A file that looks like the next part must not be taken for it.
	content := []byte("kind: EncryptionConfiguration\ninspect 2\n[]\n")
	if err := os.WriteFile(file, content, 0o600); err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	inspect := `[{"Id":"abc","Name":"/kube-apiserver","State":{"Running":true,"StartedAt":"2026-12-01T10:00:00Z"},"Config":{"Image":"kas","Cmd":["kube-apiserver","--etcd-prefix=/registry"]},"HostConfig":{"NetworkMode":"host"},"Mounts":[]}]`
	fake := "#!/bin/sh\n[ \"$1 $2 $3 $4\" = 'inspect --type container kube-apiserver' ] || exit 1\nprintf '%s\\n' '" + inspect + "'\n"
	if err := os.WriteFile(filepath.Join(bin, "docker"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	path := bin + ":" + os.Getenv("PATH")

	o, err := parseObserved(runObserveScript(t, file, "none", path), ProviderFile{})
	if err != nil {
		t.Fatal(err)
	}
	if !o.file.fetched || string(o.file.Data) != string(content) || o.file.ModTime.IsZero() {
		t.Errorf("file: %+v, fetched %v", o.file.ProviderFile, o.file.fetched)
	}
	c, err := decodeContainerList(o.inspect)
	if err != nil || c.ID != "abc" || !c.State.Running || describe(c, file).StartedAt.IsZero() {
		t.Fatalf("container: %+v %v", c, err)
	}

	// Held: no bytes sent.
	held := o.file.ProviderFile
	again, err := parseObserved(runObserveScript(t, file, held.SHA256, path), held)
	if err != nil || again.file.fetched || again.file.SHA256 != held.SHA256 {
		t.Errorf("held file: %+v fetched %v, %v", again.file.ProviderFile, again.file.fetched, err)
	}

	// No file; no docker command: the API inspects.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	noDocker := t.TempDir()
	for _, cmd := range []string{"sh", "sha256sum", "date", "stat", "wc", "cat"} {
		if p, err := exec.LookPath(cmd); err == nil {
			_ = os.Symlink(p, filepath.Join(noDocker, cmd))
		}
	}
	gone, err := parseObserved(runObserveScript(t, file, held.SHA256, noDocker), held)
	if err != nil || gone.file.Present || gone.inspect != nil {
		t.Errorf("no file, no docker: %+v inspect %q, %v", gone.file.ProviderFile, gone.inspect, err)
	}

	// Cut answers are errors, never a file or a container.
	full := runObserveScript(t, filepath.Join(dir, "none"), "none", path)
	for _, cut := range []int{5, len(full) / 2, len(full) - 3} {
		if _, err := parseObserved(full[:cut], ProviderFile{}); err == nil && !strings.HasSuffix(string(full[:cut]), "\n") {
			t.Errorf("an answer cut at %d of %d bytes parsed", cut, len(full))
		}
	}
}
