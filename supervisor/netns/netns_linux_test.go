package netns

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/openshell/openshell/internal/testenv"
)

// supervisorNS puts the test in a fresh namespace standing in for the sandbox's
// container, so nothing is added to the machine's own network. It returns a function
// running code inside that namespace.
func supervisorNS(t *testing.T) func(func() error) error {
	t.Helper()
	testenv.RequireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	sup, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("create supervisor namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() { sup.Close(); orig.Close() })
	return func(fn func() error) error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := netns.Set(sup); err != nil {
			return err
		}
		defer netns.Set(orig)
		return fn()
	}
}

func TestAgentNamespace(t *testing.T) {
	inSup := supervisorNS(t)
	sub := rand.IntN(200) + 20
	cfg := Config{HostLink: "osh-test" + strconv.Itoa(sub),
		HostAddr:  netip.MustParsePrefix(fmt.Sprintf("10.231.%d.1/30", sub)),
		AgentAddr: netip.MustParsePrefix(fmt.Sprintf("10.231.%d.2/30", sub)), ProxyPort: 3128}
	var n *Net
	var proxyLn, otherLn net.Listener
	err := inSup(func() (err error) {
		if n, err = New(cfg); err != nil {
			return err
		}
		if proxyLn, err = net.Listen("tcp", n.ProxyAddr().String()); err != nil {
			return err
		}
		otherLn, err = net.Listen("tcp", netip.AddrPortFrom(cfg.HostAddr.Addr(), 8080).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		proxyLn.Close()
		otherLn.Close()
		if err := inSup(n.Close); err != nil {
			t.Errorf("Close: %v", err)
		}
		inSup(func() error {
			if _, err := netlink.LinkByName(cfg.HostLink); err == nil {
				t.Errorf("veth %s left behind", cfg.HostLink)
			}
			return nil
		})
	})
	accepted := make(chan string, 1)
	go func() {
		c, err := proxyLn.Accept()
		if err != nil {
			return
		}
		b, _ := io.ReadAll(io.LimitReader(c, 5))
		c.Close()
		accepted <- string(b)
	}()

	// The proxy is reachable from inside.
	err = n.Do(func() error {
		c, err := net.DialTimeout("tcp", n.ProxyAddr().String(), 3*time.Second)
		if err != nil {
			return fmt.Errorf("dial proxy: %w", err)
		}
		defer c.Close()
		_, err = c.Write([]byte("hello"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-accepted:
		if got != "hello" {
			t.Fatalf("proxy got %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("proxy never saw the agent's connection")
	}
	before, _, err := n.Denied()
	if err != nil {
		t.Fatal(err)
	}

	// Anything else fails at once, although something listens there.
	err = n.Do(func() error {
		t0 := time.Now()
		_, err := net.DialTimeout("tcp", netip.AddrPortFrom(cfg.HostAddr.Addr(), 8080).String(), 5*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("direct TCP: got %v, want connection refused", err)
		}
		if d := time.Since(t0); d > time.Second {
			return fmt.Errorf("direct TCP took %v to fail", d)
		}
		u, err := net.Dial("udp", netip.AddrPortFrom(cfg.HostAddr.Addr(), 53).String())
		if err != nil {
			return err
		}
		defer u.Close()
		u.Write([]byte("q")) // refused by the firewall (EPERM or a later ICMP error)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	after, _, err := n.Denied()
	if err != nil {
		t.Fatal(err)
	}
	if after < before+2 {
		t.Fatalf("denied counter %d → %d: refusals not counted", before, after)
	}

	// A child started with Start lives in the agent namespace.
	cmd := exec.CommandContext(t.Context(), "sleep", "30")
	if err := n.Start(cmd); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	childNS, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	syscall.Fstat(int(n.Handle()), &st)
	if want := fmt.Sprintf("net:[%d]", st.Ino); childNS != want {
		t.Fatalf("child in %s, agent namespace is %s", childNS, want)
	}
	self, _ := os.Readlink("/proc/self/ns/net")
	if self == childNS {
		t.Fatal("child shares the test's namespace")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{HostLink: "a-very-long-link-name"},
		{HostAddr: netip.MustParsePrefix("10.0.0.1/30"), AgentAddr: netip.MustParsePrefix("10.0.1.2/30")},
		{HostAddr: netip.MustParsePrefix("10.0.0.1/30"), AgentAddr: netip.MustParsePrefix("10.0.0.1/30")},
		{HostAddr: netip.MustParsePrefix("fd00::1/64"), AgentAddr: netip.MustParsePrefix("fd00::2/64")},
	} {
		c.fill()
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	var c Config
	c.fill()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}
