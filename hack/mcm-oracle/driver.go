package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/gardener/machine-controller-manager/pkg/apis/machine/v1alpha1"
	"github.com/gardener/machine-controller-manager/pkg/util/provider/driver"
	mcodes "github.com/gardener/machine-controller-manager/pkg/util/provider/machinecodes/codes"
	mstatus "github.com/gardener/machine-controller-manager/pkg/util/provider/machinecodes/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"metal-driver.local/hack/mcm-oracle/cmi"
)

// forwardingDriver implements MCM's driver.Driver by calling the CMI Machine service. It
// adds nothing of its own: requests carry exactly what MCM hands a driver, and a CMI error
// comes back as the machine code of the same name, so MCM's reaction to it is upstream's.
type forwardingDriver struct {
	conn    *grpc.ClientConn
	machine cmi.MachineClient
}

var _ driver.Driver = (*forwardingDriver)(nil)

// grpcTarget turns a CMI endpoint (tcp://HOST:PORT or unix:///PATH) into a grpc-go target.
func grpcTarget(endpoint string) (string, error) {
	switch {
	case strings.HasPrefix(endpoint, "tcp://") && len(endpoint) > len("tcp://"):
		// passthrough: the address is dialled as given, no DNS resolver in between.
		return "passthrough:///" + strings.TrimPrefix(endpoint, "tcp://"), nil
	case strings.HasPrefix(endpoint, "unix:///"):
		return endpoint, nil
	case endpoint == "":
		return "", fmt.Errorf("--cmi-endpoint is required (tcp://HOST:PORT or unix:///PATH)")
	default:
		return "", fmt.Errorf("--cmi-endpoint %q: expected tcp://HOST:PORT or unix:///PATH", endpoint)
	}
}

func newForwardingDriver(endpoint string) (*forwardingDriver, error) {
	target, err := grpcTarget(endpoint)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("--cmi-endpoint %q: %w", endpoint, err)
	}
	klog.Infof("forwarding driver calls to CMI endpoint %s", endpoint)
	return &forwardingDriver{conn: conn, machine: cmi.NewMachineClient(conn)}, nil
}

func (d *forwardingDriver) Close() { _ = d.conn.Close() }

// providerSpec is the class's providerSpec as raw JSON, what `metal-driver controller` sends.
func providerSpec(class *v1alpha1.MachineClass) []byte {
	if class == nil {
		return nil
	}
	return class.ProviderSpec.Raw
}

// secrets is the Secret data MCM assembled (secretRef merged with credentialsSecretRef, and
// for CreateMachine with its userData placeholders already substituted).
func secrets(s *corev1.Secret) map[string][]byte {
	if s == nil {
		return nil
	}
	return s.Data
}

func machineName(m *v1alpha1.Machine) string {
	if m == nil {
		return ""
	}
	return m.Name
}

func providerID(m *v1alpha1.Machine) string {
	if m == nil {
		return ""
	}
	return m.Spec.ProviderID
}

func lastKnownState(m *v1alpha1.Machine) []byte {
	if m == nil || m.Status.LastKnownState == "" {
		return nil
	}
	return []byte(m.Status.LastKnownState)
}

// toMachineError maps a CMI (gRPC) error to the machine code with the same name and
// meaning, keeping the driver's message. nil stays nil.
func toMachineError(rpc, machine string, err error) error {
	if err == nil {
		return nil
	}
	st := grpcstatus.Convert(err)
	code := machineCode(st.Code())
	klog.V(3).Infof("CMI %s for machine %q failed: code %s: %s", rpc, machine, code, st.Message())
	return mstatus.Error(code, st.Message())
}

func (d *forwardingDriver) CreateMachine(ctx context.Context, req *driver.CreateMachineRequest) (*driver.CreateMachineResponse, error) {
	name := machineName(req.Machine)
	resp, err := d.machine.CreateMachine(ctx, &cmi.CreateMachineRequest{
		MachineName:    name,
		ProviderSpec:   providerSpec(req.MachineClass),
		Secrets:        secrets(req.Secret),
		LastKnownState: lastKnownState(req.Machine),
	})
	if err != nil {
		return nil, toMachineError("CreateMachine", name, err)
	}
	return &driver.CreateMachineResponse{
		ProviderID:     resp.GetProviderID(),
		NodeName:       resp.GetNodeName(),
		LastKnownState: string(resp.GetLastKnownState()),
	}, nil
}

// InitializeMachine has no CMI counterpart; Unimplemented is how a driver tells MCM to skip
// the step.
func (d *forwardingDriver) InitializeMachine(_ context.Context, _ *driver.InitializeMachineRequest) (*driver.InitializeMachineResponse, error) {
	return nil, mstatus.Error(mcodes.Unimplemented, "CMI has no InitializeMachine")
}

func (d *forwardingDriver) DeleteMachine(ctx context.Context, req *driver.DeleteMachineRequest) (*driver.DeleteMachineResponse, error) {
	name := machineName(req.Machine)
	resp, err := d.machine.DeleteMachine(ctx, &cmi.DeleteMachineRequest{
		MachineName:    name,
		ProviderSpec:   providerSpec(req.MachineClass),
		Secrets:        secrets(req.Secret),
		ProviderID:     providerID(req.Machine),
		LastKnownState: lastKnownState(req.Machine),
	})
	if err != nil {
		return nil, toMachineError("DeleteMachine", name, err)
	}
	return &driver.DeleteMachineResponse{LastKnownState: string(resp.GetLastKnownState())}, nil
}

func (d *forwardingDriver) GetMachineStatus(ctx context.Context, req *driver.GetMachineStatusRequest) (*driver.GetMachineStatusResponse, error) {
	name := machineName(req.Machine)
	resp, err := d.machine.GetMachineStatus(ctx, &cmi.GetMachineStatusRequest{
		MachineName:  name,
		ProviderSpec: providerSpec(req.MachineClass),
		Secrets:      secrets(req.Secret),
		ProviderID:   providerID(req.Machine),
	})
	if err != nil {
		return nil, toMachineError("GetMachineStatus", name, err)
	}
	return &driver.GetMachineStatusResponse{ProviderID: resp.GetProviderID(), NodeName: resp.GetNodeName()}, nil
}

func (d *forwardingDriver) ListMachines(ctx context.Context, req *driver.ListMachinesRequest) (*driver.ListMachinesResponse, error) {
	resp, err := d.machine.ListMachines(ctx, &cmi.ListMachinesRequest{
		ProviderSpec: providerSpec(req.MachineClass),
		Secrets:      secrets(req.Secret),
	})
	if err != nil {
		return nil, toMachineError("ListMachines", "", err)
	}
	list := resp.GetMachineList()
	if list == nil {
		list = map[string]string{}
	}
	return &driver.ListMachinesResponse{MachineList: list}, nil
}

// GetVolumeIDs sends the PV specs as a JSON array (CMI leaves the encoding of PVSpecList to
// the two sides).
func (d *forwardingDriver) GetVolumeIDs(ctx context.Context, req *driver.GetVolumeIDsRequest) (*driver.GetVolumeIDsResponse, error) {
	specs, err := json.Marshal(req.PVSpecs)
	if err != nil {
		return nil, mstatus.Error(mcodes.Internal, fmt.Sprintf("encoding PV specs: %v", err))
	}
	resp, err := d.machine.GetVolumeIDs(ctx, &cmi.GetVolumeIDsRequest{PVSpecList: specs})
	if err != nil {
		return nil, toMachineError("GetVolumeIDs", "", err)
	}
	return &driver.GetVolumeIDsResponse{VolumeIDs: resp.GetVolumeIDs()}, nil
}
