package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/testutil"
)

// Hundreds of idle keep-alive connections, and connections that never
// send a request, to an agent limited to 256 open files leave /readyz
// reachable: the metrics server caps its connections and makes room by
// closing idle ones.
func TestMetricsServerBounded(t *testing.T) {
	bin := lenkwerkBinary(t)
	// The agent runs without a reachable database: the metrics server
	// serves all the same (/readyz answers 503 with the reason).
	cmd := exec.Command("sh", "-c", `ulimit -Sn 256 && ulimit -Hn 256 && exec "$0" "$@"`,
		bin, "agent", "--database-url", "postgres://lenkwerk_agent@127.0.0.1:1/lenkwerk?connect_timeout=1", "--kv", "mem://metrics", "--metrics-addr", "127.0.0.1:0")
	out := &testutil.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("agent output:\n%s", out.String())
		}
	})
	addr := waitMetricsAddr(t, "the agent", out.String)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	// 300 keep-alive connections, each asking /healthz now and then (well
	// within any idle timeout) and otherwise idle; 300 that send nothing.
	var opened sync.WaitGroup
	for i := range 600 {
		opened.Add(1)
		wg.Go(func() {
			d := net.Dialer{}
			c, err := d.DialContext(ctx, "tcp", addr)
			opened.Done()
			if err != nil {
				return
			}
			defer c.Close()
			go func() { <-ctx.Done(); c.Close() }()
			if i%2 == 1 {
				<-ctx.Done()
				return
			}
			r := bufio.NewReader(c)
			for ctx.Err() == nil {
				if _, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
					return
				}
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					return
				}
				resp.Body.Close()
				select {
				case <-ctx.Done():
				case <-time.After(2 * time.Second):
				}
			}
		})
	}
	opened.Wait()

	// Longer than a client's patience, shorter than the server's idle
	// and header timeouts: only making room answers within it.
	client := &http.Client{Timeout: 5 * time.Second}
	for i := range 3 {
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			t.Fatalf("GET /readyz (%d) with 600 connections held: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /readyz: %s", resp.Status)
		}
		client.CloseIdleConnections()
	}
}
