package s3test

import (
	"net/http"
	"testing"
	"time"
)

func TestStartStopRestart(t *testing.T) {
	s := Start(t)
	status, body, err := s.do(http.MethodHead, "/"+s.Bucket())
	if err != nil || status != http.StatusOK {
		t.Fatalf("head bucket: status %d err %v body %s", status, err, body)
	}
	// A wrong secret must be refused: proves requests are really signed and checked.
	req, _ := http.NewRequest(http.MethodGet, s.Endpoint()+"/", nil)
	signV4(req, s.AccessKey(), "wrong-secret", s.Region(), time.Now().UTC())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("wrong secret: status %d, want 403", resp.StatusCode)
	}

	s.Stop()
	if _, _, err := s.do(http.MethodHead, "/"+s.Bucket()); err == nil {
		t.Fatal("server still answers after Stop")
	}
	endpoint := s.Endpoint()
	s.Restart()
	if s.Endpoint() != endpoint {
		t.Fatalf("endpoint changed across restart: %s -> %s", endpoint, s.Endpoint())
	}
	status, _, err = s.do(http.MethodHead, "/"+s.Bucket())
	if err != nil || status != http.StatusOK {
		t.Fatalf("bucket after restart: status %d err %v", status, err)
	}
}
