// Package s3test gives tests a real S3-compatible server: versitygw serving a posix directory under
// t.TempDir(), on a free loopback port, with one bucket created. It can be stopped and restarted on the same
// port and directory, to test what happens when object storage goes away mid-operation.
//
// The versitygw binary is found in this order: $TROVE_VERSITYGW, `versitygw` on PATH, <repo>/bin/versitygw
// (the repository is the directory holding go.work, found by walking up from the working directory). When
// none exists it is built once into <repo>/bin from the pinned tools/versitygw module (about a minute cold).
package s3test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	accessKey = "trovetestaccess"
	secretKey = "trovetestsecret0123456789"
	bucket    = "trove-test"
	region    = "us-east-1"
)

// Server is a running versitygw owned by one test.
type Server struct {
	t    testing.TB
	bin  string
	dir  string // the posix root: buckets are its sub-directories
	host string // the address it listens on
	port int
	log  *bytes.Buffer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start starts versitygw on loopback with a root access/secret key, waits until it answers signed
// requests, creates the bucket and stops the server when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartOn(t, "127.0.0.1")
}

// StartOn is Start listening on host, an IP address of this machine (e.g. a container network's gateway,
// so that containers reach the server).
func StartOn(t testing.TB, host string) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	s := &Server{t: t, bin: bin, dir: filepath.Join(t.TempDir(), "gw"), host: host}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		t.Fatalf("s3test: %v", err)
	}
	t.Cleanup(s.Stop)
	// A free port found by listening can be taken by someone else before versitygw binds it: try a few.
	for attempt := 0; ; attempt++ {
		s.port = freePort(t, host)
		err = s.start()
		if err == nil {
			break
		}
		if attempt == 2 {
			t.Fatalf("s3test: %v", err)
		}
	}
	if err := s.createBucket(); err != nil {
		t.Fatalf("s3test: %v", err)
	}
	return s
}

// Endpoint is the base URL of the server (http://HOST:PORT; HOST is 127.0.0.1 unless started with StartOn).
func (s *Server) Endpoint() string { return "http://" + net.JoinHostPort(s.host, strconv.Itoa(s.port)) }

// Bucket is the bucket created at start.
func (s *Server) Bucket() string { return bucket }

// Region is the region the server signs for.
func (s *Server) Region() string { return region }

// AccessKey is the root user's access key id.
func (s *Server) AccessKey() string { return accessKey }

// SecretKey is the root user's secret key.
func (s *Server) SecretKey() string { return secretKey }

// Dir is the posix directory the server stores buckets in (bucket = sub-directory).
func (s *Server) Dir() string { return s.dir }

// Stop kills the server and waits for it to exit (idempotent). Connections in flight are cut, as when a
// real server crashes.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart stops the server and starts it again on the same port with the same directory.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	var err error
	// The port can linger briefly after the kill; retry binding for a moment.
	for attempt := 0; attempt < 5; attempt++ {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.t.Fatalf("s3test: restart: %v", err)
}

func (s *Server) start() error {
	s.log = new(bytes.Buffer)
	cmd := exec.Command(s.bin,
		"--access", accessKey, "--secret", secretKey, "--region", region,
		"--port", net.JoinHostPort(s.host, strconv.Itoa(s.port)), "--quiet",
		"posix", s.dir)
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	// Pdeathsig: a test binary that dies (timeout panic, kill) must not leave a server running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-done:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			return fmt.Errorf("versitygw exited at start: %s", s.log.String())
		default:
		}
		// A signed ListBuckets answering 200 means the server is up and accepts the root keys.
		status, _, err := s.do(http.MethodGet, "/")
		if err == nil && status == http.StatusOK {
			return nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("versitygw on port %d not ready within 15s (last status %d, err %v): %s", s.port, status, err, s.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) createBucket() error {
	status, body, err := s.do(http.MethodPut, "/"+bucket)
	if err != nil {
		return fmt.Errorf("create bucket: %w", err)
	}
	if status != http.StatusOK {
		return fmt.Errorf("create bucket: status %d: %s", status, body)
	}
	return nil
}

// do sends a body-less request signed with AWS Signature V4 (unsigned payload), enough for the few calls
// this helper makes without pulling an S3 SDK into the shared module.
func (s *Server) do(method, path string) (int, []byte, error) {
	req, err := http.NewRequest(method, s.Endpoint()+path, nil)
	if err != nil {
		return 0, nil, err
	}
	signV4(req, accessKey, secretKey, region, time.Now().UTC())
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.Bytes(), nil
}

// signV4 signs a request with no query string and no body for service s3.
func signV4(req *http.Request, access, secret, region string, now time.Time) {
	const payload = "UNSIGNED-PAYLOAD"
	amzDate := now.Format("20060102T150405Z")
	day := now.Format("20060102")
	req.Header.Set("X-Amz-Date", amzDate)
	req.Header.Set("X-Amz-Content-Sha256", payload)
	canonical := req.Method + "\n" + req.URL.EscapedPath() + "\n" + "" + "\n" +
		"host:" + req.URL.Host + "\n" +
		"x-amz-content-sha256:" + payload + "\n" +
		"x-amz-date:" + amzDate + "\n" + "\n" +
		"host;x-amz-content-sha256;x-amz-date" + "\n" + payload
	scope := day + "/" + region + "/s3/aws4_request"
	sum := sha256.Sum256([]byte(canonical))
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(sum[:])
	mac := func(key []byte, data string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(data))
		return h.Sum(nil)
	}
	k := mac([]byte("AWS4"+secret), day)
	k = mac(k, region)
	k = mac(k, "s3")
	k = mac(k, "aws4_request")
	sig := hex.EncodeToString(mac(k, toSign))
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+access+"/"+scope+
		", SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="+sig)
}

func freePort(t testing.TB, host string) int {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("s3test: find a free port: %v", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

var (
	binaryOnce sync.Once
	binaryPath string
	binaryErr  error
)

// Binary returns the path of a versitygw binary, building it into <repo>/bin when none is found.
func Binary() (string, error) {
	binaryOnce.Do(func() { binaryPath, binaryErr = findOrBuild() })
	return binaryPath, binaryErr
}

func findOrBuild() (string, error) {
	if p := os.Getenv("TROVE_VERSITYGW"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("TROVE_VERSITYGW=%s: %w", p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	repo, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("no versitygw: not on PATH, TROVE_VERSITYGW unset, and %v to find bin/versitygw", err)
	}
	bin := filepath.Join(repo, "bin", "versitygw")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	// Build to a temporary name and rename, so test packages building at the same time never run a
	// half-written binary.
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", err
	}
	tmp := bin + ".tmp" + strconv.Itoa(os.Getpid())
	cmd := exec.Command("go", "build", "-C", filepath.Join(repo, "tools", "versitygw"), "-o", tmp,
		"github.com/versity/versitygw/cmd/versitygw")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("build versitygw (set TROVE_VERSITYGW to use another binary): %v: %s", err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	return bin, nil
}

// RepoRoot walks up from the working directory to the directory holding go.work (the repository root).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.work above the working directory")
		}
		dir = parent
	}
}
