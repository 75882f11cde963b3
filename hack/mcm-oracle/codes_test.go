package main

import (
	"errors"
	"testing"

	mcodes "github.com/gardener/machine-controller-manager/pkg/util/provider/machinecodes/codes"
	mstatus "github.com/gardener/machine-controller-manager/pkg/util/provider/machinecodes/status"
	grpccodes "google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
)

// Every gRPC code maps to the machine code that MCM spells the same way, and the mapping is
// one to one.
func TestEveryGRPCCodeHasTheSameNamedMachineCode(t *testing.T) {
	seen := map[mcodes.Code]grpccodes.Code{}
	for c := grpccodes.OK; c <= grpccodes.Unauthenticated; c++ {
		m, ok := machineCodes[c]
		if !ok {
			t.Fatalf("gRPC code %s has no machine code", c)
		}
		if m.String() != c.String() {
			t.Errorf("gRPC %s maps to machine code %s", c, m)
		}
		if prev, dup := seen[m]; dup {
			t.Errorf("machine code %s is the image of both %s and %s", m, prev, c)
		}
		seen[m] = c
	}
	if got := machineCode(grpccodes.Code(99)); got != mcodes.Unknown {
		t.Errorf("an unknown gRPC code maps to %s, want Unknown", got)
	}
}

// A CMI error reaches MCM as a machine-codes error it parses back to the same code and
// message (MCM re-reads the code from the error text).
func TestCMIErrorRoundTripsThroughMCMStatusParsing(t *testing.T) {
	err := toMachineError("CreateMachine", "m1",
		grpcstatus.Error(grpccodes.ResourceExhausted, "no c3.small.x86 capacity in sv"))
	st, ok := mstatus.FromError(err)
	if !ok || st.Code() != mcodes.ResourceExhausted || st.Message() != "no c3.small.x86 capacity in sv" {
		t.Fatalf("got ok=%v code=%s message=%q", ok, st.Code(), st.Message())
	}
	plain := toMachineError("ListMachines", "", errors.New("not a gRPC status"))
	if st, _ := mstatus.FromError(plain); st.Code() != mcodes.Unknown {
		t.Fatalf("a non-status error maps to %s, want Unknown", st.Code())
	}
	if toMachineError("GetMachineStatus", "m1", nil) != nil {
		t.Fatal("nil error must stay nil")
	}
}

func TestGRPCTarget(t *testing.T) {
	for in, want := range map[string]string{
		"tcp://127.0.0.1:4000":     "passthrough:///127.0.0.1:4000",
		"unix:///run/cmi/cmi.sock": "unix:///run/cmi/cmi.sock",
	} {
		if got, err := grpcTarget(in); err != nil || got != want {
			t.Errorf("grpcTarget(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "127.0.0.1:4000", "tcp://", "http://x:1"} {
		if _, err := grpcTarget(bad); err == nil {
			t.Errorf("grpcTarget(%q) accepted", bad)
		}
	}
}
