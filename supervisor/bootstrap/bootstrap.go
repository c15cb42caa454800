// Package bootstrap is the hand-off between a compute driver and the supervisor it
// starts: what the driver must tell the supervisor (which gateway, which sandbox, which
// token, what to run) and how that travels as environment variables. Every driver
// fills a Config and calls Env; the supervisor calls FromEnv. The VM driver sends the
// same Config as JSON over its bootstrap vsock port instead of the environment.
package bootstrap

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Environment variable names. The first group matches upstream OpenShell's supervisor.
const (
	EnvEndpoint        = "OPENSHELL_ENDPOINT"      // gateway gRPC URL, e.g. https://host.openshell.internal:17670
	EnvSandboxID       = "OPENSHELL_SANDBOX_ID"    // gateway-assigned sandbox id
	EnvSandboxName     = "OPENSHELL_SANDBOX"       // sandbox name
	EnvToken           = "OPENSHELL_SANDBOX_TOKEN" // the sandbox JWT itself (prefer the file form)
	EnvTokenFile       = "OPENSHELL_SANDBOX_TOKEN_FILE"
	EnvTLSCA           = "OPENSHELL_TLS_CA" // path of the gateway CA bundle (PEM)
	EnvTLSCert         = "OPENSHELL_TLS_CERT"
	EnvTLSKey          = "OPENSHELL_TLS_KEY"
	EnvLogLevel        = "OPENSHELL_LOG_LEVEL"
	EnvMainProcessSpec = "OPENSHELL_MAIN_PROCESS_SPEC" // JSON MainProcessSpec, optionally "base64url:"-prefixed

	// Ours: facts about the image that the driver read and the supervisor needs.
	EnvImageUser    = "OPENSHELL_IMAGE_USER"    // the image's USER ("" = none given)
	EnvImageWorkdir = "OPENSHELL_IMAGE_WORKDIR" // the image's WorkingDir ("" = none given)
	EnvPolicyFile   = "OPENSHELL_POLICY_FILE"   // optional path of the initial policy (YAML)
)

// MainProcessSpec is the agent's main process. Command is argv, never re-parsed by a shell.
type MainProcessSpec struct {
	Version int      `json:"version"`
	Command []string `json:"command"`
	TTY     bool     `json:"tty"`
	// Env is extra environment for the main process (sandbox spec + template env).
	Env map[string]string `json:"env,omitempty"`
}

// Config is everything a supervisor needs to start. Secrets are carried by value here
// (Token, CA PEM) so that the VM bootstrap channel can send one JSON document; Env
// writes no secret into the environment except through files the driver created.
type Config struct {
	Endpoint     string          `json:"endpoint"`
	SandboxID    string          `json:"sandbox_id"`
	SandboxName  string          `json:"sandbox_name"`
	Token        string          `json:"token,omitempty"`
	TokenFile    string          `json:"token_file,omitempty"`
	CAFile       string          `json:"ca_file,omitempty"`
	CAPEM        []byte          `json:"ca_pem,omitempty"`
	LogLevel     string          `json:"log_level,omitempty"`
	ImageUser    string          `json:"image_user,omitempty"`
	ImageWorkdir string          `json:"image_workdir,omitempty"`
	PolicyFile   string          `json:"policy_file,omitempty"`
	PolicyYAML   []byte          `json:"policy_yaml,omitempty"`
	Main         MainProcessSpec `json:"main"`
	// InstanceSecret identifies this boot of the supervisor to the gateway (hex, 32
	// random bytes): a session is bound to the instance that presented it first, so a
	// stolen token alone cannot take the session over. The VM runner mints one per
	// boot and serves it once in the bootstrap document (the runner also requires it
	// on its gateway and egress ports); where no driver supplies one, the supervisor
	// mints its own at start. It never travels through the environment.
	InstanceSecret string `json:"instance_secret,omitempty"`
}

// Validate names the first missing or malformed field.
func (c *Config) Validate() error {
	switch {
	case c.Endpoint == "":
		return fmt.Errorf("bootstrap: endpoint is empty: set %s to the gateway URL", EnvEndpoint)
	case c.SandboxID == "":
		return fmt.Errorf("bootstrap: sandbox id is empty: set %s", EnvSandboxID)
	case c.Token == "" && c.TokenFile == "":
		return fmt.Errorf("bootstrap: no sandbox token: set %s (or %s)", EnvTokenFile, EnvToken)
	case c.Main.Version != 0 && c.Main.Version != 1:
		return fmt.Errorf("bootstrap: main process spec version %d is not supported (want 1)", c.Main.Version)
	}
	return nil
}

// LoadToken returns the token, reading TokenFile when the token is not inline.
func (c *Config) LoadToken() (string, error) {
	if c.Token != "" {
		return c.Token, nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("bootstrap: read sandbox token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Env renders the config as environment variables (KEY=VALUE). Inline secrets (Token,
// CAPEM, PolicyYAML) are not rendered: a driver writes them to files and sets the
// *File fields.
func (c *Config) Env() []string {
	spec, _ := json.Marshal(c.Main) // a struct of strings and bools always marshals
	env := []string{
		EnvEndpoint + "=" + c.Endpoint,
		EnvSandboxID + "=" + c.SandboxID,
		EnvSandboxName + "=" + c.SandboxName,
		EnvMainProcessSpec + "=base64url:" + base64.RawURLEncoding.EncodeToString(spec),
	}
	add := func(k, v string) {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	add(EnvTokenFile, c.TokenFile)
	add(EnvTLSCA, c.CAFile)
	add(EnvLogLevel, c.LogLevel)
	add(EnvImageUser, c.ImageUser)
	add(EnvImageWorkdir, c.ImageWorkdir)
	add(EnvPolicyFile, c.PolicyFile)
	return env
}

// FromEnv reads a Config from the environment via getenv (os.Getenv in production).
func FromEnv(getenv func(string) string) (*Config, error) {
	c := &Config{
		Endpoint:     getenv(EnvEndpoint),
		SandboxID:    getenv(EnvSandboxID),
		SandboxName:  getenv(EnvSandboxName),
		Token:        getenv(EnvToken),
		TokenFile:    getenv(EnvTokenFile),
		CAFile:       getenv(EnvTLSCA),
		LogLevel:     getenv(EnvLogLevel),
		ImageUser:    getenv(EnvImageUser),
		ImageWorkdir: getenv(EnvImageWorkdir),
		PolicyFile:   getenv(EnvPolicyFile),
	}
	if raw := getenv(EnvMainProcessSpec); raw != "" {
		spec, err := ParseMainProcessSpec(raw)
		if err != nil {
			return nil, err
		}
		c.Main = *spec
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// ParseMainProcessSpec decodes the OPENSHELL_MAIN_PROCESS_SPEC value: JSON, or
// "base64url:" followed by base64url-encoded JSON.
func ParseMainProcessSpec(raw string) (*MainProcessSpec, error) {
	data := []byte(raw)
	if rest, ok := strings.CutPrefix(raw, "base64url:"); ok {
		dec, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(rest, "="))
		if err != nil {
			return nil, fmt.Errorf("bootstrap: %s: bad base64url: %w", EnvMainProcessSpec, err)
		}
		data = dec
	}
	var spec MainProcessSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("bootstrap: %s: not a JSON object {\"version\":1,\"command\":[...],\"tty\":bool}: %w", EnvMainProcessSpec, err)
	}
	if spec.Version != 0 && spec.Version != 1 {
		return nil, fmt.Errorf("bootstrap: %s: version %d is not supported (want 1)", EnvMainProcessSpec, spec.Version)
	}
	for i, a := range spec.Command {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, fmt.Errorf("bootstrap: %s: command[%d] contains a NUL byte", EnvMainProcessSpec, i)
		}
	}
	return &spec, nil
}

// ErrNoConfig is returned by a bootstrap source that has nothing to give.
var ErrNoConfig = errors.New("bootstrap: no configuration available")
