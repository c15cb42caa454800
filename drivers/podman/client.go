package podman

// A small typed client for the part of Podman's libpod REST API the driver uses, over
// the service's Unix socket. The project does not use Podman's own Go bindings: they
// pull about 750 packages into the gateway, among them cgo packages (gpgme, btrfs) that
// make a plain `go build ./...` fail unless every build in the repository carries
// Podman's remote build tags and their C headers are installed.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/openshell/openshell/drivers/containers"
)

// apiPrefix is the libpod API version the driver speaks (Podman 5).
const apiPrefix = "/v5.0.0/libpod"

// apiError is a non-2xx answer from the service.
type apiError struct {
	Status  int
	Message string // the service's "message" (or "cause"), else the body
	Op      string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s: podman answered %d: %s", e.Op, e.Status, e.Message)
}

func statusOf(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

func isNotFound(err error) bool { return statusOf(err) == http.StatusNotFound }

// isNameInUse: a create whose name is taken. Podman answers 500 (some versions 409)
// with "is already in use".
func isNameInUse(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && (ae.Status == http.StatusConflict || strings.Contains(ae.Message, "already in use"))
}

// client talks to one Podman service socket.
type client struct {
	socket string
	http   *http.Client
	stream *http.Client // no overall timeout: events and builds run long
}

func newClient(socket string) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
	}
	return &client{
		socket: socket,
		http:   &http.Client{Transport: tr, Timeout: 2 * time.Minute},
		stream: &http.Client{Transport: tr},
	}
}

func (c *client) close() {
	c.http.Transport.(*http.Transport).CloseIdleConnections()
}

// do sends a request; body (if not nil and not an io.Reader) is sent as JSON. A non-2xx
// answer becomes an *apiError. The caller closes the returned body.
func (c *client) do(ctx context.Context, hc *http.Client, method, path string, q url.Values, body any, op string) (*http.Response, error) {
	var rd io.Reader
	ctype := ""
	switch b := body.(type) {
	case nil:
	case io.Reader:
		rd, ctype = b, "application/x-tar"
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return nil, fmt.Errorf("%s: encode request: %w", op, err)
		}
		rd, ctype = bytes.NewReader(raw), "application/json"
	}
	u := "http://d" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusNotModified {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, &apiError{Status: resp.StatusCode, Message: errorMessage(raw), Op: op}
	}
	return resp, nil
}

// errorMessage takes the message out of a libpod error body ({"cause","message","response"}).
func errorMessage(raw []byte) string {
	var e struct {
		Cause   string `json:"cause"`
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &e) == nil && (e.Message != "" || e.Cause != "") {
		if e.Message != "" {
			return e.Message
		}
		return e.Cause
	}
	return strings.TrimSpace(string(raw))
}

// call does a request and decodes a JSON answer into out (when not nil).
func (c *client) call(ctx context.Context, method, path string, q url.Values, body, out any, op string) error {
	resp, err := c.do(ctx, c.http, method, path, q, body, op)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 32<<20)).Decode(out); err != nil {
		return fmt.Errorf("%s: decode answer: %w", op, err)
	}
	return nil
}

// pingResult is what /_ping says about the service.
type pingResult struct {
	LibpodAPIVersion string // Libpod-Api-Version header ("" = not Podman)
	Server           string
}

func (c *client) ping(ctx context.Context) (pingResult, error) {
	resp, err := c.do(ctx, c.http, http.MethodGet, "/_ping", nil, nil, "ping")
	if err != nil {
		return pingResult{}, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	return pingResult{LibpodAPIVersion: resp.Header.Get("Libpod-Api-Version"), Server: resp.Header.Get("Server")}, nil
}

// info is the part of /libpod/info the driver reads.
type info struct {
	Host struct {
		CgroupVersion  string `json:"cgroupVersion"`
		CgroupManager  string `json:"cgroupManager"`
		CgroupControls []string
		Security       struct {
			Rootless bool `json:"rootless"`
		} `json:"security"`
		OCIRuntime struct {
			Name string `json:"name"`
		} `json:"ociRuntime"`
		NetworkBackend string `json:"networkBackend"`
	} `json:"host"`
	Version struct {
		Version    string `json:"Version"`
		APIVersion string `json:"APIVersion"`
	} `json:"version"`
}

func (c *client) info(ctx context.Context) (info, error) {
	var in info
	err := c.call(ctx, http.MethodGet, apiPrefix+"/info", nil, nil, &in, "read podman info")
	return in, err
}

type imageInspect struct {
	ID     string `json:"Id"`
	Config struct {
		User       string `json:"User"`
		WorkingDir string `json:"WorkingDir"`
	} `json:"Config"`
}

func (c *client) imageInspect(ctx context.Context, ref string) (imageInspect, error) {
	var img imageInspect
	err := c.call(ctx, http.MethodGet, apiPrefix+"/images/"+url.PathEscape(ref)+"/json", nil, nil, &img, "inspect image "+ref)
	return img, err
}

// Container create request: the subset of Podman's SpecGenerator the driver fills.
type specMount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type"`
	Source      string   `json:"source"`
	Options     []string `json:"options,omitempty"`
}

type specNamespace struct {
	NSMode string `json:"nsmode"`
	Value  string `json:"value,omitempty"`
}

type specResources struct {
	CPU *struct {
		Quota  int64  `json:"quota,omitempty"`
		Period uint64 `json:"period,omitempty"`
	} `json:"cpu,omitempty"`
	Memory *struct {
		Limit       *int64 `json:"limit,omitempty"`
		Reservation *int64 `json:"reservation,omitempty"`
		Swap        *int64 `json:"swap,omitempty"`
	} `json:"memory,omitempty"`
	Pids *struct {
		Limit int64 `json:"limit"`
	} `json:"pids,omitempty"`
}

type specGenerator struct {
	Name            string                    `json:"name"`
	Image           string                    `json:"image"`
	Hostname        string                    `json:"hostname,omitempty"`
	Entrypoint      []string                  `json:"entrypoint"`
	Command         []string                  `json:"command"`
	Env             map[string]string         `json:"env,omitempty"`
	Labels          map[string]string         `json:"labels,omitempty"`
	User            string                    `json:"user"`
	StopSignal      int                       `json:"stop_signal,omitempty"`
	StopTimeout     *uint                     `json:"stop_timeout,omitempty"`
	Mounts          []specMount               `json:"mounts,omitempty"`
	NetNS           specNamespace             `json:"netns"`
	Networks        map[string]map[string]any `json:"Networks,omitempty"`
	NetworkOptions  map[string][]string       `json:"network_options,omitempty"`
	HostAdd         []string                  `json:"hostadd,omitempty"`
	CapDrop         []string                  `json:"cap_drop,omitempty"`
	CapAdd          []string                  `json:"cap_add,omitempty"`
	NoNewPrivileges bool                      `json:"no_new_privileges"`
	Resources       *specResources            `json:"resource_limits,omitempty"`
	RestartPolicy   string                    `json:"restart_policy,omitempty"`
	OCIRuntime      string                    `json:"oci_runtime,omitempty"`
	HealthConfig    map[string]any            `json:"healthconfig,omitempty"`
	Devices         []map[string]string       `json:"devices,omitempty"`
	Annotations     map[string]string         `json:"annotations,omitempty"`
}

func (c *client) containerCreate(ctx context.Context, s *specGenerator) (string, error) {
	var out struct {
		ID string `json:"Id"`
	}
	if err := c.call(ctx, http.MethodPost, apiPrefix+"/containers/create", nil, s, &out, "create container "+s.Name); err != nil {
		return "", err
	}
	return out.ID, nil
}

func (c *client) containerStart(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodPost, apiPrefix+"/containers/"+url.PathEscape(id)+"/start", nil, nil, nil, "start container "+containers.ShortID(id))
}

func (c *client) containerStop(ctx context.Context, id string, timeout time.Duration) error {
	q := url.Values{"timeout": {strconv.Itoa(int(timeout.Round(time.Second) / time.Second))}}
	// The stop itself waits up to timeout; give the HTTP call that long and more.
	ctx, cancel := context.WithTimeout(ctx, timeout+30*time.Second)
	defer cancel()
	return c.call(ctx, http.MethodPost, apiPrefix+"/containers/"+url.PathEscape(id)+"/stop", q, nil, nil, "stop container "+containers.ShortID(id))
}

func (c *client) containerRemove(ctx context.Context, id string) error {
	q := url.Values{"force": {"true"}, "v": {"true"}, "timeout": {"0"}}
	return c.call(ctx, http.MethodDelete, apiPrefix+"/containers/"+url.PathEscape(id), q, nil, nil, "remove container "+containers.ShortID(id))
}

// containerState is the State block of a libpod container inspect.
type containerState struct {
	Status     string    `json:"Status"` // created, running, paused, exited, stopped, stopping, removing, ...
	Running    bool      `json:"Running"`
	Paused     bool      `json:"Paused"`
	Restarting bool      `json:"Restarting"`
	OOMKilled  bool      `json:"OOMKilled"`
	Dead       bool      `json:"Dead"`
	Pid        int       `json:"Pid"`
	ExitCode   int       `json:"ExitCode"`
	Error      string    `json:"Error"`
	StartedAt  time.Time `json:"StartedAt"`
	FinishedAt time.Time `json:"FinishedAt"`
}

type containerInspect struct {
	ID        string          `json:"Id"`
	Name      string          `json:"Name"`
	Created   time.Time       `json:"Created"`
	Image     string          `json:"Image"`
	ImageName string          `json:"ImageName"`
	State     *containerState `json:"State"`
	Config    *struct {
		Labels     map[string]string `json:"Labels"`
		User       string            `json:"User"`
		Entrypoint json.RawMessage   `json:"Entrypoint"`
		Hostname   string            `json:"Hostname"`
	} `json:"Config"`
	HostConfig *struct {
		CapAdd         []string `json:"CapAdd"`
		CapDrop        []string `json:"CapDrop"`
		NanoCpus       int64    `json:"NanoCpus"`
		CpuQuota       int64    `json:"CpuQuota"`
		CpuPeriod      uint64   `json:"CpuPeriod"`
		Memory         int64    `json:"Memory"`
		MemorySwap     int64    `json:"MemorySwap"`
		PidsLimit      int64    `json:"PidsLimit"`
		NetworkMode    string   `json:"NetworkMode"`
		SecurityOpt    []string `json:"SecurityOpt"`
		RestartPolicy  *struct{ Name string }
		Binds          []string          `json:"Binds"`
		ExtraHosts     []string          `json:"ExtraHosts"`
		Runtime        string            `json:"Runtime"`
		LogConfig      map[string]any    `json:"LogConfig"`
		Annotations    map[string]string `json:"Annotations"`
		ReadonlyRootfs bool              `json:"ReadonlyRootfs"`
	} `json:"HostConfig"`
	OCIRuntime string `json:"OCIRuntime"`
}

func (c *client) containerInspect(ctx context.Context, id string) (containerInspect, error) {
	var ci containerInspect
	err := c.call(ctx, http.MethodGet, apiPrefix+"/containers/"+url.PathEscape(id)+"/json", nil, nil, &ci, "inspect container "+containers.ShortID(id))
	return ci, err
}

type listedContainer struct {
	ID     string            `json:"Id"`
	Names  []string          `json:"Names"`
	Labels map[string]string `json:"Labels"`
	State  string            `json:"State"`
}

// labelFilters encodes label=value pairs as a libpod filters query value.
func labelFilters(extra map[string][]string, labels map[string]string) string {
	f := map[string][]string{}
	for k, v := range extra {
		f[k] = v
	}
	for k, v := range labels {
		f["label"] = append(f["label"], k+"="+v)
	}
	raw, _ := json.Marshal(f)
	return string(raw)
}

func (c *client) containerList(ctx context.Context, labels map[string]string) ([]listedContainer, error) {
	q := url.Values{"all": {"true"}, "filters": {labelFilters(nil, labels)}}
	var out []listedContainer
	err := c.call(ctx, http.MethodGet, apiPrefix+"/containers/json", q, nil, &out, "list containers")
	return out, err
}

// containerLogs returns the last n lines of stdout and stderr, interleaved.
func (c *client) containerLogs(ctx context.Context, id string, n int) (string, error) {
	q := url.Values{"stdout": {"true"}, "stderr": {"true"}, "tail": {strconv.Itoa(n)}}
	resp, err := c.do(ctx, c.http, http.MethodGet, apiPrefix+"/containers/"+url.PathEscape(id)+"/logs", q, nil, "read logs of "+containers.ShortID(id))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	err = demux(&buf, io.LimitReader(resp.Body, 1<<20))
	return buf.String(), err
}

// demux copies a multiplexed log stream (8-byte frame headers: stream, 0, 0, 0, size
// big-endian uint32) to w. A stream that does not start with a valid header is copied
// as it is (a TTY container's logs are not framed).
func demux(w io.Writer, r io.Reader) error {
	br := bufio.NewReader(r)
	for {
		hdr, err := br.Peek(8)
		if len(hdr) == 0 && errors.Is(err, io.EOF) {
			return nil
		}
		if len(hdr) < 8 || hdr[0] > 2 || hdr[1] != 0 || hdr[2] != 0 || hdr[3] != 0 {
			_, err := io.Copy(w, br)
			return err
		}
		size := binary.BigEndian.Uint32(hdr[4:8])
		if _, err := br.Discard(8); err != nil {
			return err
		}
		if _, err := io.CopyN(w, br, int64(size)); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// event is one entry of the libpod event stream.
type event struct {
	Type     string `json:"Type"`
	Action   string `json:"Action"`
	Status   string `json:"status"`
	TimeNano int64  `json:"timeNano"`
	Actor    struct {
		ID         string            `json:"ID"`
		Attributes map[string]string `json:"Attributes"`
	} `json:"Actor"`
}

// action is the event's action (older answers carry it only as status).
func (e event) action() string {
	if e.Action != "" {
		return e.Action
	}
	return e.Status
}

// events streams container events with the given labels until ctx ends or the stream
// breaks; the error channel gets one value (nil after ctx ended) and both close.
func (c *client) events(ctx context.Context, labels map[string]string, since time.Time) (<-chan event, <-chan error) {
	out := make(chan event, 64)
	errc := make(chan error, 1)
	go func() {
		defer close(out)
		defer close(errc)
		q := url.Values{"stream": {"true"}, "filters": {labelFilters(map[string][]string{"type": {"container"}}, labels)}}
		if !since.IsZero() {
			q.Set("since", strconv.FormatInt(since.Unix(), 10))
		}
		resp, err := c.do(ctx, c.stream, http.MethodGet, apiPrefix+"/events", q, nil, "watch podman events")
		if err != nil {
			errc <- err
			return
		}
		defer resp.Body.Close()
		errc <- decodeEvents(ctx, resp.Body, out)
	}()
	return out, errc
}

// decodeEvents reads JSON events from r into out until r ends or ctx is done.
func decodeEvents(ctx context.Context, r io.Reader, out chan<- event) error {
	dec := json.NewDecoder(r)
	for {
		var ev event
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF // the service closed a stream that should not end
			}
			return fmt.Errorf("podman event stream: %w", err)
		}
		select {
		case out <- ev:
		case <-ctx.Done():
			return nil
		}
	}
}
