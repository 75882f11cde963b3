//! The Equinix Metal device API: typed requests and responses, and the [`DeviceApi`]
//! seam between the provider logic and HTTP.
//!
//! The provider is generic over [`DeviceApi`], so its tests run against an in-memory fake
//! and production runs against [`client::MetalClient`] (reqwest). The simulator shares
//! [`types`] with the client, so both speak the same field names.

pub mod client;
pub mod error;
pub mod operation;
pub mod pagination;
pub mod retry;
pub mod tls;
pub mod types;

use std::future::Future;

use tokio::time::Instant;
use uuid::Uuid;

pub use error::Error;
pub use operation::Operation;
pub use types::*;

use crate::secret::Secret;

/// An Equinix Metal API token (`X-Auth-Token`). Never printed.
pub type ApiToken = Secret<String>;

/// Per-call context: whose token to send, and when the caller stops waiting (the gRPC
/// deadline, so we never keep retrying for a client that has gone).
#[derive(Debug, Clone)]
pub struct Call {
    pub token: ApiToken,
    pub deadline: Option<Instant>,
}

impl Call {
    pub fn new(token: ApiToken) -> Self {
        Self {
            token,
            deadline: None,
        }
    }

    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }
}

/// Server-side filters for `GET /projects/{id}/devices`. The client pages through every
/// result whatever these are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// `tag`: a single tag the device must carry.
    pub tag: Option<String>,
    /// `hostname`: a (partial-match) hostname filter.
    pub hostname: Option<String>,
}

/// The device operations the driver needs, one method per spec operation.
///
/// Implementations retry what is safe to retry (GET, DELETE, and any request refused with
/// 429) and never blindly repeat a create: a create that may have committed returns an
/// error for which [`Error::may_have_committed`] is true, and the caller looks first.
pub trait DeviceApi: Send + Sync + 'static {
    /// `createDevice`: `POST /projects/{id}/devices`.
    fn create_device(
        &self,
        call: &Call,
        project: Uuid,
        input: &DeviceCreateInput,
    ) -> impl Future<Output = Result<Device, Error>> + Send;

    /// `findDeviceById`: `GET /devices/{id}`.
    fn get_device(
        &self,
        call: &Call,
        id: Uuid,
    ) -> impl Future<Output = Result<Device, Error>> + Send;

    /// `findProjectDevices`: `GET /projects/{id}/devices`, every page, every device.
    fn list_project_devices(
        &self,
        call: &Call,
        project: Uuid,
        query: &ListQuery,
    ) -> impl Future<Output = Result<Vec<Device>, Error>> + Send {
        self.list_project_devices_kept(call, project, query, Some)
    }

    /// `findProjectDevices`, every page, keeping only what `keep` returns for each device as
    /// its page arrives: memory stays one page plus the kept values however large the
    /// project is (see [`pagination::collect_kept`]).
    fn list_project_devices_kept<T, K>(
        &self,
        call: &Call,
        project: Uuid,
        query: &ListQuery,
        keep: K,
    ) -> impl Future<Output = Result<Vec<T>, Error>> + Send
    where
        T: Send,
        K: FnMut(Device) -> Option<T> + Send;

    /// `updateDevice`: `PUT /devices/{id}`.
    fn update_device(
        &self,
        call: &Call,
        id: Uuid,
        input: &DeviceUpdateInput,
    ) -> impl Future<Output = Result<Device, Error>> + Send;

    /// `deleteDevice`: `DELETE /devices/{id}` (`force_delete` as a query parameter).
    fn delete_device(
        &self,
        call: &Call,
        id: Uuid,
        force: bool,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// `performAction`: `POST /devices/{id}/actions`.
    fn perform_action(
        &self,
        call: &Call,
        id: Uuid,
        input: &DeviceActionInput,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}
