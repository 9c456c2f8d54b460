package natstest

import (
	"testing"

	"github.com/nats-io/nats.go"
)

func TestRestartKeepsPortAndStore(t *testing.T) {
	s := Start(t)
	url := s.URL()
	nc := s.Connect()
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(&nats.KeyValueConfig{Bucket: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put("a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	if s.URL() != url {
		t.Fatalf("url changed: %s -> %s", url, s.URL())
	}
	nc2 := s.Connect()
	js2, _ := nc2.JetStream()
	kv2, err := js2.KeyValue("k")
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv2.Get("a")
	if err != nil || string(e.Value()) != "1" {
		t.Fatalf("value after restart: %v %v", e, err)
	}
}
