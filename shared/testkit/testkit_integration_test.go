//go:build integration

package testkit_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"

	"troveng.dev/shared/testkit"
)

// dial is a bash one-liner run in a container: connect to HOST:PORT, send what is given, print the first
// line of the answer.
func dial(host string, port int, send string) []string {
	return []string{"bash", "-c", fmt.Sprintf(`exec 3<>/dev/tcp/%s/%d && printf '%%b' '%s' >&3 && timeout 5 head -n 1 <&3`, host, port, send)}
}

// The servers are on the host, on the gateway address; a container on the kit's network reaches them,
// and the host reaches the container's own address.
func TestIntegrationKitServersReachableFromContainers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k := testkit.Start(t, testkit.Options{S3: true})

	if net.ParseIP(k.Gateway()) == nil || k.HostAddr() != k.Gateway() {
		t.Fatalf("gateway %q, host address %q", k.Gateway(), k.HostAddr())
	}
	if !strings.HasPrefix(k.NATSURL(), "nats://"+k.Gateway()+":") {
		t.Fatalf("NATS URL %s is not on the gateway %s", k.NATSURL(), k.Gateway())
	}
	if !k.Conn().IsConnected() {
		t.Fatal("the kit's connection is not connected")
	}

	// A Redis server in a plain container on the network: the host talks to it by its address.
	c, err := k.RunContainer(ctx, testkit.ContainerOptions{
		Entrypoint: []string{"redis-server", "--protected-mode", "no", "--save", ""},
		Ports:      []string{"6379/tcp"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.IP(), strings.TrimSuffix(k.Gateway(), ".1")) {
		t.Logf("container address %s, gateway %s", c.IP(), k.Gateway())
	}

	natsPort := natsPortOf(t, k.NATSURL())
	r, err := c.Exec(ctx, dial(k.HostAddr(), natsPort, "")...)
	if err != nil || r.Code != 0 || !strings.HasPrefix(string(r.Stdout), "INFO {") {
		t.Fatalf("NATS from the container: %v %s", err, r)
	}
	s3 := strings.TrimPrefix(k.S3().Endpoint(), "http://")
	s3host, s3port, _ := net.SplitHostPort(s3)
	p, _ := strconv.Atoi(s3port)
	r, err = c.Exec(ctx, dial(s3host, p, `GET / HTTP/1.0\r\n\r\n`)...)
	if err != nil || r.Code != 0 || !strings.HasPrefix(string(r.Stdout), "HTTP/1.") {
		t.Fatalf("versitygw from the container: %v %s", err, r)
	}

	ping := func() error {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(c.IP(), "6379"), 2*time.Second)
		if err != nil {
			return err
		}
		defer func() { _ = conn.Close() }()
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write([]byte("PING\r\n")); err != nil {
			return err
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "+PONG\r\n" {
			return fmt.Errorf("answer %q", line)
		}
		return nil
	}
	waitFor(t, "redis in the container answers the host", ping)

	// Kill, start again: the address is refreshed and the server answers again; the anchor kept the
	// gateway (and NATS on it) alive meanwhile.
	if err := c.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if running, err := c.Running(ctx); err != nil || running {
		t.Fatalf("running after kill: %v %v", running, err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "redis answers after the restart", ping)
	if err := k.NATS().Restart(); err != nil {
		t.Fatal(err)
	}
	r, err = c.Exec(ctx, dial(k.HostAddr(), natsPort, "")...)
	if err != nil || r.Code != 0 || !strings.HasPrefix(string(r.Stdout), "INFO {") {
		t.Fatalf("NATS after its restart, from the container: %v %s", err, r)
	}
	out, err := c.Output(ctx, "sh", "-c", "echo out; echo err >&2")
	if err != nil || out != "out" {
		t.Fatalf("Output: %q %v", out, err)
	}
	if r, err := c.Exec(ctx, "sh", "-c", "echo err >&2; exit 3"); err != nil || r.Code != 3 || string(r.Stderr) != "err\n" || len(r.Stdout) != 0 {
		t.Fatalf("Exec: %v %s", err, r)
	}
}

// Containers and networks whose test process died (no cleanup ran) are removed by the next kit.
func TestIntegrationKitReapsOrphans(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := testkit.LoadContainersEnv(); err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	img := os.Getenv(testkit.EnvImage)
	if img == "" {
		img = testkit.DefaultImage
	}
	name := "testkit-orphan-" + strconv.Itoa(os.Getpid())
	orphan, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image: img, Name: name, Entrypoint: []string{"sleep", "infinity"},
			Labels: map[string]string{"trove.testkit": "x", "trove.testkit.pid": strconv.Itoa(dead.Process.Pid), "trove.testkit.host": host},
		},
		Started: true,
		Logger:  tclog.NewNoopLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = orphan.Terminate(context.Background(), testcontainers.StopTimeout(0)) })

	testkit.Start(t, testkit.Options{})

	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cli.Close() }()
	list, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: client.Filters{}.Add("name", name)})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Fatalf("the orphan %s is still there: %+v", name, list.Items[0].State)
	}
}

func natsPortOf(t *testing.T, url string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(strings.TrimPrefix(url, "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func waitFor(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
