//go:build linux && cgo

package libkrun_test

const cgoEnabled = true
