//! The test kit: what the demo, the integration tests, the soak and the bench each used to
//! build for themselves. An in-process simulator + driver stack with its CMI client, the
//! MachineClass they all drive (`fixture`), a supervised `metal-driver` subprocess, and
//! readings of another process's `/proc` entries. It is not part of the driver or the
//! controller: `hack/check-layering.sh` lets only the demo, the kit itself and the binaries
//! under `src/bin` (plus tests) name it.

pub mod child;
pub mod fixture;
pub mod proc;
pub mod stack;

pub use stack::{Stack, StackError};
