package main

import (
	mcodes "github.com/gardener/machine-controller-manager/pkg/util/provider/machinecodes/codes"
	grpccodes "google.golang.org/grpc/codes"
)

// machineCodes pairs every gRPC status code with MCM's machine code of the same name. MCM's
// codes are the gRPC ones plus Uninitialized, which no CMI call returns. Spelled out rather
// than cast from the number so a renumbering on either side cannot go unnoticed (see
// codes_test.go).
var machineCodes = map[grpccodes.Code]mcodes.Code{
	grpccodes.OK:                 mcodes.OK,
	grpccodes.Canceled:           mcodes.Canceled,
	grpccodes.Unknown:            mcodes.Unknown,
	grpccodes.InvalidArgument:    mcodes.InvalidArgument,
	grpccodes.DeadlineExceeded:   mcodes.DeadlineExceeded,
	grpccodes.NotFound:           mcodes.NotFound,
	grpccodes.AlreadyExists:      mcodes.AlreadyExists,
	grpccodes.PermissionDenied:   mcodes.PermissionDenied,
	grpccodes.ResourceExhausted:  mcodes.ResourceExhausted,
	grpccodes.FailedPrecondition: mcodes.FailedPrecondition,
	grpccodes.Aborted:            mcodes.Aborted,
	grpccodes.OutOfRange:         mcodes.OutOfRange,
	grpccodes.Unimplemented:      mcodes.Unimplemented,
	grpccodes.Internal:           mcodes.Internal,
	grpccodes.Unavailable:        mcodes.Unavailable,
	grpccodes.DataLoss:           mcodes.DataLoss,
	grpccodes.Unauthenticated:    mcodes.Unauthenticated,
}

// machineCode is the machine code for a gRPC code; a code outside the table is Unknown, as
// gRPC itself treats unknown codes.
func machineCode(c grpccodes.Code) mcodes.Code {
	if m, ok := machineCodes[c]; ok {
		return m
	}
	return mcodes.Unknown
}
