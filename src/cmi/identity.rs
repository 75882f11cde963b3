//! `cmi.v1.Identity`: who we are, what we implement, and whether we are ready.

use tonic::{Request, Response, Status};

use super::{
    PLUGIN_NAME, PLUGIN_VERSION,
    observe::observed,
    rpc::Rpc,
    v1::{
        GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
        GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse, identity_server,
        plugin_capability,
    },
};
use crate::telemetry::{Metrics, admin::Readiness};

pub struct IdentityService {
    readiness: Readiness,
    metrics: Metrics,
}

impl IdentityService {
    pub fn new(readiness: Readiness, metrics: Metrics) -> Self {
        Self { readiness, metrics }
    }
}

#[tonic::async_trait]
impl identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        observed(&self.metrics, Rpc::GetPluginInfo, "", async {
            Ok(Response::new(GetPluginInfoResponse {
                name: PLUGIN_NAME.to_owned(),
                version: PLUGIN_VERSION.to_owned(),
                manifest: [("provider".to_owned(), "equinixmetal".to_owned())].into(),
            }))
        })
        .await
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        observed(&self.metrics, Rpc::GetPluginCapabilities, "", async {
            // We implement every Machine RPC, and CMI says an optional RPC is advertised
            // iff it is implemented: so each one's capability.
            let capabilities = Rpc::ALL
                .into_iter()
                .filter_map(Rpc::capability)
                .map(|t| PluginCapability {
                    r#type: Some(plugin_capability::Type::Rpc(plugin_capability::Rpc {
                        r#type: t as i32,
                    })),
                })
                .collect();
            Ok(Response::new(GetPluginCapabilitiesResponse {
                capabilities,
            }))
        })
        .await
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        observed(&self.metrics, Rpc::Probe, "", async {
            if self.readiness.get() {
                Ok(Response::new(ProbeResponse { ready: Some(true) }))
            } else {
                // CMI: an unhealthy plugin returns an error; shutting down counts.
                Err(Status::failed_precondition("metal-driver is shutting down"))
            }
        })
        .await
    }
}
