package bootstrap

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// maxConfigBytes bounds a bootstrap document read from a channel.
const maxConfigBytes = 4 << 20

// Read decodes one JSON Config from r (the VM bootstrap channel) and validates it.
func Read(r io.Reader) (*Config, error) {
	var c Config
	dec := json.NewDecoder(io.LimitReader(r, maxConfigBytes))
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("bootstrap: decode config from the bootstrap channel: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Materialize writes the inline secrets of c (Token, CAPEM, PolicyYAML) into files
// under dir (mode 0600, dir 0700) and points the *File fields at them, so the rest of
// the supervisor reads every secret from a file and none reaches the environment.
func Materialize(c *Config, dir string) error {
	if c.Token == "" && len(c.CAPEM) == 0 && len(c.PolicyYAML) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("bootstrap: create %s: %w", dir, err)
	}
	write := func(name string, data []byte) (string, error) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			return "", fmt.Errorf("bootstrap: write %s: %w", p, err)
		}
		return p, os.Chmod(p, 0o600)
	}
	var err error
	if c.Token != "" {
		if c.TokenFile, err = write("sandbox-token", []byte(c.Token)); err != nil {
			return err
		}
		c.Token = ""
	}
	if len(c.CAPEM) > 0 {
		if c.CAFile, err = write("gateway-ca.pem", c.CAPEM); err != nil {
			return err
		}
	}
	if len(c.PolicyYAML) > 0 {
		if c.PolicyFile, err = write("policy.yaml", c.PolicyYAML); err != nil {
			return err
		}
		c.PolicyYAML = nil
	}
	return nil
}
