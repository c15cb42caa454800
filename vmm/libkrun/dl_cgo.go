//go:build linux && cgo

package libkrun

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

// One trampoline per C signature used from libkrun.h: cgo cannot call a function
// pointer directly.
typedef int32_t (*krun_v)(void);
typedef int32_t (*krun_u)(uint32_t);
typedef int32_t (*krun_u_u)(uint32_t, uint32_t);
typedef int32_t (*krun_u_u8_u32)(uint32_t, uint8_t, uint32_t);
typedef int32_t (*krun_u_s)(uint32_t, const char *);
typedef int32_t (*krun_u_s_s)(uint32_t, const char *, const char *);
typedef int32_t (*krun_kernel)(uint32_t, const char *, uint32_t, const char *, const char *);
typedef int32_t (*krun_disk)(uint32_t, const char *, const char *, bool);
typedef int32_t (*krun_port2)(uint32_t, uint32_t, const char *, bool);

static int32_t call_v(void *f) { return ((krun_v)f)(); }
static int32_t call_u(void *f, uint32_t a) { return ((krun_u)f)(a); }
static int32_t call_u_u(void *f, uint32_t a, uint32_t b) { return ((krun_u_u)f)(a, b); }
static int32_t call_u_u8_u32(void *f, uint32_t a, uint8_t b, uint32_t c) { return ((krun_u_u8_u32)f)(a, b, c); }
static int32_t call_u_s(void *f, uint32_t a, const char *b) { return ((krun_u_s)f)(a, b); }
static int32_t call_u_s_s(void *f, uint32_t a, const char *b, const char *c) { return ((krun_u_s_s)f)(a, b, c); }
static int32_t call_kernel(void *f, uint32_t a, const char *b, uint32_t c, const char *d, const char *e) { return ((krun_kernel)f)(a, b, c, d, e); }
static int32_t call_disk(void *f, uint32_t a, const char *b, const char *c, bool d) { return ((krun_disk)f)(a, b, c, d); }
static int32_t call_port2(void *f, uint32_t a, uint32_t b, const char *c, bool d) { return ((krun_port2)f)(a, b, c, d); }

static void *os_dlopen(const char *path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }
static const char *os_dlerror(void) { const char *e = dlerror(); return e ? e : "unknown dlopen error"; }
*/
import "C"

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"
)

// lib is an opened libkrun with every symbol Enter needs resolved.
type lib struct {
	path string
	sym  map[string]unsafe.Pointer
}

func openLibrary(path string) (*lib, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	h := C.os_dlopen(cpath)
	if h == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoLibrary, C.GoString(C.os_dlerror()))
	}
	l := &lib{path: path, sym: map[string]unsafe.Pointer{}}
	var missing []string
	for _, name := range requiredSymbols {
		cname := C.CString(name)
		p := C.dlsym(h, cname)
		C.free(unsafe.Pointer(cname))
		if p == nil {
			missing = append(missing, name)
			continue
		}
		l.sym[name] = p
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %s lacks %v", ErrTooOld, path, missing)
	}
	return l, nil
}

func cstr(s string) *C.char {
	if s == "" {
		return nil
	}
	return C.CString(s)
}

func free(p *C.char) {
	if p != nil {
		C.free(unsafe.Pointer(p))
	}
}

// check turns libkrun's negative errno returns into errors naming the call.
func check(fn string, rc C.int32_t) error {
	if rc < 0 {
		return fmt.Errorf("libkrun %s: %w", fn, syscall.Errno(-rc))
	}
	return nil
}

func (l *lib) setLogLevel(level uint32) error {
	return check("krun_set_log_level", C.call_u(l.sym["krun_set_log_level"], C.uint32_t(level)))
}

func (l *lib) createCtx() (uint32, error) {
	rc := C.call_v(l.sym["krun_create_ctx"])
	if err := check("krun_create_ctx", rc); err != nil {
		return 0, err
	}
	return uint32(rc), nil
}

func (l *lib) setVMConfig(ctx uint32, vcpus uint8, ramMiB uint32) error {
	return check("krun_set_vm_config", C.call_u_u8_u32(l.sym["krun_set_vm_config"], C.uint32_t(ctx), C.uint8_t(vcpus), C.uint32_t(ramMiB)))
}

func (l *lib) setKernel(ctx uint32, kernel string, format uint32, initramfs, cmdline string) error {
	k, i, c := cstr(kernel), cstr(initramfs), cstr(cmdline)
	defer free(k)
	defer free(i)
	defer free(c)
	return check("krun_set_kernel", C.call_kernel(l.sym["krun_set_kernel"], C.uint32_t(ctx), k, C.uint32_t(format), i, c))
}

func (l *lib) addDisk(ctx uint32, blockID, path string, readOnly bool) error {
	b, p := cstr(blockID), cstr(path)
	defer free(b)
	defer free(p)
	return check("krun_add_disk", C.call_disk(l.sym["krun_add_disk"], C.uint32_t(ctx), b, p, C.bool(readOnly)))
}

func (l *lib) addVirtiofs(ctx uint32, tag, path string) error {
	t, p := cstr(tag), cstr(path)
	defer free(t)
	defer free(p)
	return check("krun_add_virtiofs", C.call_u_s_s(l.sym["krun_add_virtiofs"], C.uint32_t(ctx), t, p))
}

func (l *lib) disableImplicitVsock(ctx uint32) error {
	return check("krun_disable_implicit_vsock", C.call_u(l.sym["krun_disable_implicit_vsock"], C.uint32_t(ctx)))
}

func (l *lib) addVsock(ctx uint32, tsiFeatures uint32) error {
	return check("krun_add_vsock", C.call_u_u(l.sym["krun_add_vsock"], C.uint32_t(ctx), C.uint32_t(tsiFeatures)))
}

func (l *lib) addVsockPort(ctx, port uint32, path string, listen bool) error {
	p := cstr(path)
	defer free(p)
	return check("krun_add_vsock_port2", C.call_port2(l.sym["krun_add_vsock_port2"], C.uint32_t(ctx), C.uint32_t(port), p, C.bool(listen)))
}

func (l *lib) setConsoleOutput(ctx uint32, path string) error {
	p := cstr(path)
	defer free(p)
	return check("krun_set_console_output", C.call_u_s(l.sym["krun_set_console_output"], C.uint32_t(ctx), p))
}

// startEnter returns only when libkrun refused the configuration; otherwise the VM
// owns the process and exits it when the guest shuts down.
func (l *lib) startEnter(ctx uint32) error {
	if err := check("krun_start_enter", C.call_u(l.sym["krun_start_enter"], C.uint32_t(ctx))); err != nil {
		return err
	}
	return errors.New("libkrun krun_start_enter returned without an error")
}
