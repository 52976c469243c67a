package gitsource

import (
	"encoding/pem"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

// TestHTTPSBearerTokenAndCA serves a repository over HTTPS with a private
// CA and a bearer token (git http-backend behind net/http/httptest), and
// checks that the CA bundle is needed and enough, that a wrong token is
// refused, that the insecure switch works and warns, and that an unchanged
// poll asks for the ref advertisement only.
func TestHTTPSBearerTokenAndCA(t *testing.T) {
	w := newLocalRepo(t, map[string]string{"cluster.yml": clusterV1})
	const token = "tok-4f9c1e2a7b"
	srvGit := &gitHTTPServer{root: filepath.Dir(w.bare), auth: bearerAuth(token)}
	srv := httptest.NewTLSServer(srvGit)
	t.Cleanup(srv.Close)
	url := srv.URL + "/" + filepath.Base(w.bare)
	dir := t.TempDir()
	caFile := writeFile(t, filepath.Join(dir, "ca.pem"), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))
	tokenFile := writeFile(t, filepath.Join(dir, "token"), token+"\n")
	wrongFile := writeFile(t, filepath.Join(dir, "wrong"), "tok-wrong-0000\n")
	var logs logBuffer

	s, err := New(Config{URL: url, Ref: "main", CacheDir: t.TempDir(), BearerTokenFile: tokenFile, CAFile: caFile, Logger: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	rev, changed := mustPoll(t, s)
	if !changed || string(rev.Files["cluster.yml"]) != clusterV1 {
		t.Fatalf("first poll over HTTPS: %v %+v", changed, rev)
	}
	reqs, posts, _ := srvGit.snapshot()
	if posts != 1 {
		t.Errorf("first poll made %d upload-pack requests, want 1", posts)
	}
	if _, changed := mustPoll(t, s); changed {
		t.Error("unchanged poll changed")
	}
	reqs2, posts2, _ := srvGit.snapshot()
	if reqs2-reqs != 1 || posts2 != posts {
		t.Errorf("unchanged poll: %d requests (%d upload-pack), want 1 (the ref advertisement)", reqs2-reqs, posts2-posts)
	}

	for _, tc := range []struct {
		name string
		cfg  Config
		want Reason
		says []string
	}{
		{"no CA bundle", Config{BearerTokenFile: tokenFile}, ReasonTLSVerify, []string{"certificate"}},
		{"wrong token", Config{BearerTokenFile: wrongFile, CAFile: caFile}, ReasonAuthRefused, []string{"authentication required"}},
		{"no token", Config{CAFile: caFile}, ReasonAuthRefused, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.URL, cfg.Ref, cfg.CacheDir, cfg.Logger = url, "main", t.TempDir(), newLogger(&logs)
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = wantReason(t, s, tc.want, tc.says...)
			for _, secret := range []string{token, "tok-wrong-0000"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the error shows a token: %v", err)
				}
			}
		})
	}

	insecure, err := New(Config{URL: url, Ref: "main", CacheDir: t.TempDir(), BearerTokenFile: tokenFile, InsecureSkipTLSVerify: true, Logger: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	if _, changed := mustPoll(t, insecure); !changed {
		t.Error("insecure source: no revision")
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "INSECURE: TLS certificate verification") {
		t.Errorf("no loud warning for InsecureSkipTLSVerify:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), token) || strings.Contains(logs.String(), "tok-wrong-0000") {
		t.Errorf("the log shows a token:\n%s", logs.String())
	}
}

// TestHTTPBasicAuth: user and password over plain HTTP on loopback, and a
// wrong password refused without showing it.
func TestHTTPBasicAuth(t *testing.T) {
	w := newLocalRepo(t, map[string]string{"cluster.yml": clusterV1})
	const password = "pw-7d1f0c9e33"
	srv := httptest.NewServer(&gitHTTPServer{root: filepath.Dir(w.bare), auth: basicAuth("atrest", password)})
	t.Cleanup(srv.Close)
	url := srv.URL + "/" + filepath.Base(w.bare)
	dir := t.TempDir()
	var logs logBuffer
	good, err := New(Config{URL: url, CacheDir: t.TempDir(), Username: "atrest", PasswordFile: writeFile(t, filepath.Join(dir, "pw"), password), Logger: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	if rev, _ := mustPoll(t, good); rev.Ref != "HEAD" || rev.Commit != w.git("rev-parse", "HEAD") {
		t.Fatalf("HEAD over HTTP: %+v", rev)
	}
	bad, err := New(Config{URL: url, CacheDir: t.TempDir(), Username: "atrest", PasswordFile: writeFile(t, filepath.Join(dir, "bad"), "pw-wrong-1234"), Logger: newLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	err = wantReason(t, bad, ReasonAuthRefused)
	for _, secret := range []string{password, "pw-wrong-1234"} {
		if strings.Contains(err.Error(), secret) || strings.Contains(logs.String(), secret) {
			t.Errorf("a password shows in the error or log: %v\n%s", err, logs.String())
		}
	}
}

// TestUnreachable: nothing listens.
func TestUnreachable(t *testing.T) {
	srv := httptest.NewServer(nil)
	url := srv.URL + "/repo.git"
	srv.Close()
	s, err := New(Config{URL: url, Ref: "main", CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	wantReason(t, s, ReasonUnreachable, "connection refused")
}
