// Command mcm-oracle is MCM's own machine controller (the library every Go provider's
// machine-controller binary is built from) with a driver that does no provider work itself:
// every driver.Driver call is forwarded to `metal-driver serve` over CMI gRPC.
//
// It exists as a yardstick. Run on the same scenario as `metal-driver controller`, both must
// leave the same Machine, Node and device state behind; where they differ, this one is
// upstream's behaviour. It also gives the footprint benchmark its Go reference point.
//
//	mcm-oracle --cmi-endpoint=tcp://127.0.0.1:PORT [MCM's machine-controller flags...]
//
// The endpoint may also come from $CMI_ENDPOINT (so Gardener's sidecar args work unchanged).
package main

import (
	"fmt"
	"os"

	_ "github.com/gardener/machine-controller-manager/pkg/util/client/metrics/prometheus"
	"github.com/gardener/machine-controller-manager/pkg/util/provider/app"
	"github.com/gardener/machine-controller-manager/pkg/util/provider/app/options"
	_ "github.com/gardener/machine-controller-manager/pkg/util/reflector/prometheus"
	_ "github.com/gardener/machine-controller-manager/pkg/util/workqueue/prometheus"
	"github.com/spf13/pflag"
	"k8s.io/component-base/cli/flag"
	"k8s.io/component-base/logs"
)

func main() {
	s := options.NewMCServer()
	s.AddFlags(pflag.CommandLine)
	endpoint := pflag.CommandLine.String("cmi-endpoint", os.Getenv("CMI_ENDPOINT"),
		"CMI endpoint of the driver: tcp://HOST:PORT or unix:///PATH (default $CMI_ENDPOINT)")
	flag.InitFlags()
	logs.InitLogs()
	defer logs.FlushLogs()

	drv, err := newForwardingDriver(*endpoint)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mcm-oracle: %v\n", err)
		os.Exit(2)
	}
	defer drv.Close()
	if err := app.Run(s, drv); err != nil {
		fmt.Fprintf(os.Stderr, "mcm-oracle: %v\n", err)
		os.Exit(1)
	}
}
