//! End-to-end tests of `metal-driver controller` against a real kube-apiserver + etcd (and MCM's
//! own `machine-controller-manager` binary where named), with `metal-driver sim` and
//! `metal-driver serve` as subprocesses on loopback.
//!
//! These are `#[ignore]`d so plain `cargo test` stays fast; run them with `hack/e2e.sh` (or
//! `make e2e`), which brings the environment up, sets `METAL_DRIVER_E2E=1` and `KUBECONFIG`,
//! and runs `cargo test --test e2e_controller -- --ignored`. Without those variables the
//! tests return at once (so `cargo test -- --ignored` elsewhere does not fail for lack of a
//! cluster).
//!
//! Every test runs in its own namespace with its own sim, driver and controller (and MCM),
//! so they can run in parallel; Node names are derived from the namespace, which carries a
//! random suffix. Process logs go to `target/e2e-logs/<namespace>/`.
//!
//! One test binary, a module per job: `support` and `stack` are the harness, `oracle` the
//! comparison with MCM's own machine controller; the others hold the scenarios by theme.

mod stack;
mod support;

mod oracle;

mod bootstrap_token;
mod drain;
mod lifecycle;
mod metrics;
mod node;
mod oracle_scenarios;
mod safety;
mod sidecar;
