//! metal-driver: a Common Machine Interface (CMI) driver that turns Gardener MCM `Machine`
//! objects into Equinix Metal devices, plus the controller that drives it and a simulator
//! of the Metal API.
//!
//! Dependencies run one way: `cmi` → `provider` → `metal`; `sim` uses only `metal` types;
//! `provider` never imports tonic, kube or reqwest. The wire concepts that driver, controller
//! and CLI share have one home each at the root: [`provider_id`] (the ProviderID) and
//! [`secret_data`] (MCM's Secret merge and userData placeholders).

pub mod cmi;
pub mod controller;
pub mod demo;
pub mod heap;
pub mod machine_cli;
pub mod manifest;
pub mod metal;
pub mod provider;
pub mod provider_id;
pub mod secret;
pub mod secret_data;
pub mod shutdown;
pub mod sidecar;
pub mod sim;
pub mod telemetry;
pub mod testkit;
