package vm

// Pools made through the API (`openshell pool create`): the driver keeps them in
// pools.json in its state dir, beside the pools of its configuration (the gateway
// config's [drivers.vm.pools]), and serves both alike. A pool of the configuration is
// changed there only: the API neither replaces nor deletes it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"

	"github.com/openshell/openshell/api/poolv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm/internal/quantity"
	"github.com/openshell/openshell/internal/atomicfile"
)

// Where a pool is defined (PoolStatus.Source, poolv1.Pool.source).
const (
	PoolSourceConfig = "config" // the driver's configuration (the gateway config)
	PoolSourceAPI    = "api"    // CreatePool, kept in apiPoolsFile
)

// apiPoolsFile holds the pools made through the API, in the driver's state dir.
const apiPoolsFile = "pools.json"

type apiPoolsDoc struct {
	Pools map[string]PoolConfig `json:"pools"`
}

// readAPIPools reads the API's pools from stateDir (none when there is no file).
func readAPIPools(stateDir string) (map[string]PoolConfig, error) {
	path := filepath.Join(stateDir, apiPoolsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]PoolConfig{}, nil
	}
	if err != nil {
		return map[string]PoolConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	var doc apiPoolsDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return map[string]PoolConfig{}, fmt.Errorf("%s: %w: it lists the pools made with `openshell pool create`; mend it, or remove it and create them again", path, err)
	}
	if doc.Pools == nil {
		doc.Pools = map[string]PoolConfig{}
	}
	return doc.Pools, nil
}

func writeAPIPools(stateDir string, pools map[string]PoolConfig) error {
	b, err := json.MarshalIndent(apiPoolsDoc{Pools: pools}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(stateDir, apiPoolsFile), append(b, '\n'), 0o600)
}

var _ drivers.Pooler = (*Driver)(nil)

// CreatePool implements drivers.Pooler: the pool is kept in pools.json and the refill
// loop starts booting its VMs, one at a time.
func (d *Driver) CreatePool(_ context.Context, req *poolv1.CreatePoolRequest) (*poolv1.Pool, error) {
	n := req.GetName()
	bad := func(format string, a ...any) error {
		return fmt.Errorf("pool %q: %s: %w", n, fmt.Sprintf(format, a...), drivers.ErrInvalidArgument)
	}
	if n == "" {
		return nil, fmt.Errorf("name: name the pool (1-32 lowercase letters, digits or '-'): %w", drivers.ErrInvalidArgument)
	}
	if req.GetSize() < 1 || req.GetSize() > maxPoolSize {
		return nil, bad("size %d: use 1 to %d idle VMs", req.GetSize(), maxPoolSize)
	}
	pc := PoolConfig{Size: int(req.GetSize()), Image: req.GetImage(), DiskSize: req.GetDiskSize()}
	if q := req.GetCpu(); q != "" {
		c, err := quantity.CPUs(q)
		if err != nil {
			return nil, bad("cpu: %v", err)
		}
		pc.CPUs = c
	}
	if q := req.GetMemory(); q != "" {
		m, err := quantity.MemoryMiB(q)
		if err != nil {
			return nil, bad("memory: %v", err)
		}
		pc.MemoryMiB = m
	}
	if errs := d.cfg.validatePool("pool "+n, n, pc); len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", errors.Join(errs...), drivers.ErrInvalidArgument)
	}
	shape, err := d.poolShape(pc)
	if err != nil {
		return nil, bad("%v", err)
	}
	p := d.pools
	// p.apiMu orders the API's changes; p.mu is held only to read and swap the pools,
	// not across the file's write (claims take p.mu).
	p.apiMu.Lock()
	defer p.apiMu.Unlock()
	p.mu.Lock()
	next, err := d.admitPoolLocked(n, pc, shape)
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := writeAPIPools(d.cfg.StateDir, next); err != nil {
		return nil, fmt.Errorf("pool %q: keep it in the driver's state: %w", n, err)
	}
	p.mu.Lock()
	p.api = next
	p.forgetFailuresLocked(n)
	p.mu.Unlock()
	p.wake()
	d.log.Info("warm pool created", "pool", n, "size", pc.Size, "image", shape.image, "vcpus", shape.vcpus, "memory_mib", shape.memoryMiB, "disk_bytes", shape.diskBytes)
	return PoolStatus{Name: n, Source: PoolSourceAPI, Size: pc.Size, Image: shape.image, VCPUs: shape.vcpus,
		MemoryMiB: shape.memoryMiB, DiskBytes: shape.diskBytes}.proto(), nil
}

// forgetFailuresLocked drops what pool n's failed boots left (its last error and back-off),
// so that a pool made again under that name starts afresh. p.mu held.
func (p *pools) forgetFailuresLocked(n string) {
	delete(p.lastErr, n)
	delete(p.retryAt, n)
	delete(p.fails, n)
}

// admitPoolLocked checks that pool n of shape may be added and returns the API's
// pools with it. p.mu held.
func (d *Driver) admitPoolLocked(n string, pc PoolConfig, shape *resolved) (map[string]PoolConfig, error) {
	p := d.pools
	if p.apiErr != nil {
		return nil, fmt.Errorf("%w: %w", p.apiErr, drivers.ErrFailedPrecondition)
	}
	if _, ok := p.conf[n]; ok {
		return nil, fmt.Errorf("pool %q is defined in the gateway config ([drivers.vm.pools.%s]): change it there, or name this one otherwise: %w", n, n, drivers.ErrAlreadyExists)
	}
	if _, ok := p.api[n]; ok {
		return nil, fmt.Errorf("pool %q exists; to change it, delete it first (`openshell pool delete %s`): %w", n, n, drivers.ErrAlreadyExists)
	}
	// A create takes from the first pool (by name) of its shape: a second pool of the
	// same shape would never be used.
	for _, other := range p.namesLocked() {
		oc, _ := p.configLocked(other)
		if theirs, err := d.poolShape(oc); err == nil && oc.Size > 0 && *theirs == *shape {
			fix := "delete it and create it again"
			if _, conf := p.conf[other]; conf {
				fix = "in the gateway config"
			}
			return nil, fmt.Errorf("pool %q has the same image, CPUs, memory and disk size, and serves those creates already; to change its size, do it there (%s): %w", other, fix, drivers.ErrAlreadyExists)
		}
	}
	next := maps.Clone(p.api)
	next[n] = pc
	return next, nil
}

// ListPools implements drivers.Pooler.
func (d *Driver) ListPools(context.Context) ([]*poolv1.Pool, error) {
	var out []*poolv1.Pool
	for _, ps := range d.Pools() {
		out = append(out, ps.proto())
	}
	return out, nil
}

// proto is the pool as the API shows it.
func (ps PoolStatus) proto() *poolv1.Pool {
	return &poolv1.Pool{Name: ps.Name, Source: ps.Source, Size: int32(ps.Size), Image: ps.Image, Vcpus: uint32(ps.VCPUs),
		MemoryMib: uint32(ps.MemoryMiB), DiskSizeBytes: ps.DiskBytes, Idle: int32(ps.Idle), Booting: int32(ps.Booting),
		Claimed: int32(ps.Claimed), IdleRssBytes: ps.IdleRSSBytes, LastError: ps.LastError}
}

// DeletePool implements drivers.Pooler: the pool leaves pools.json and its VMs that
// no sandbox took are stopped (one still booting once its boot ends).
func (d *Driver) DeletePool(_ context.Context, n string) (int, error) {
	if n == "" {
		return 0, fmt.Errorf("name: name the pool to delete (see `openshell pool list`): %w", drivers.ErrInvalidArgument)
	}
	p := d.pools
	p.apiMu.Lock()
	defer p.apiMu.Unlock()
	p.mu.Lock()
	if _, ok := p.conf[n]; ok {
		p.mu.Unlock()
		return 0, fmt.Errorf("pool %q is defined in the gateway config: remove [drivers.vm.pools.%s] there (or set its size to 0) and restart the gateway: %w", n, n, drivers.ErrFailedPrecondition)
	}
	if _, ok := p.api[n]; !ok {
		err := fmt.Errorf("pool %q: no such pool (see `openshell pool list`): %w", n, drivers.ErrNotFound)
		if p.apiErr != nil {
			err = fmt.Errorf("%w; the pools made with `openshell pool create` are not known: %w", err, p.apiErr)
		}
		p.mu.Unlock()
		return 0, err
	}
	next := maps.Clone(p.api)
	delete(next, n)
	p.mu.Unlock()
	if err := writeAPIPools(d.cfg.StateDir, next); err != nil {
		return 0, fmt.Errorf("pool %q: remove it from the driver's state: %w", n, err)
	}
	p.mu.Lock()
	p.api = next
	var stop []*poolMember
	stopped := 0
	for id, m := range p.members {
		if m.pool != n {
			continue
		}
		stopped++
		if id == p.booting {
			continue // bootMember stops it when its boot ends
		}
		delete(p.members, id)
		stop = append(stop, m)
	}
	p.forgetFailuresLocked(n)
	p.mu.Unlock()
	for _, m := range stop {
		d.stopMember(m, "its pool was deleted")
	}
	d.log.Info("warm pool deleted", "pool", n, "stopped_vms", stopped)
	return stopped, nil
}
