// Package version holds the build's version string and the few wire constants the
// CLI shares with the gateway. It imports nothing, so the CLI can name them without
// linking the gateway server.
package version

// Version is the openshell version string (set at build time with
// -ldflags "-X github.com/openshell/openshell/internal/version.Version=...").
var Version = "dev"

// DriverHeader is the Health response header naming the gateway's compute driver.
const DriverHeader = "x-openshell-driver"
