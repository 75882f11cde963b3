//! `cmi.v1.Machine`: decode the request ([`super::decode`]), call the provider, encode the
//! answer. Nothing else happens here; every decision is in `crate::provider` and every code
//! in `super::status`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{
    decode,
    observe::observed,
    rpc::Rpc,
    v1::{
        CreateMachineRequest, CreateMachineResponse, DeleteMachineRequest, DeleteMachineResponse,
        GetMachineStatusRequest, GetMachineStatusResponse, GetVolumeIDsRequest,
        GetVolumeIDsResponse, ListMachinesRequest, ListMachinesResponse, ShutDownMachineRequest,
        ShutDownMachineResponse, machine_server,
    },
};
use crate::{metal::DeviceApi, provider::Provider, telemetry::Metrics};

pub struct MachineService<A> {
    provider: Arc<Provider<A>>,
    metrics: Metrics,
}

impl<A> MachineService<A> {
    pub fn new(provider: Arc<Provider<A>>, metrics: Metrics) -> Self {
        Self { provider, metrics }
    }
}

#[tonic::async_trait]
impl<A: DeviceApi> machine_server::Machine for MachineService<A> {
    async fn create_machine(
        &self,
        request: Request<CreateMachineRequest>,
    ) -> Result<Response<CreateMachineResponse>, Status> {
        let input = decode::machine(request);
        let name = input.machine_name.clone();
        observed(&self.metrics, Rpc::CreateMachine, &name, async {
            let info = self.provider.create_machine(input).await?;
            Ok(Response::new(CreateMachineResponse {
                provider_id: info.provider_id,
                node_name: info.node_name,
                last_known_state: Vec::new(),
            }))
        })
        .await
    }

    async fn delete_machine(
        &self,
        request: Request<DeleteMachineRequest>,
    ) -> Result<Response<DeleteMachineResponse>, Status> {
        let input = decode::machine(request);
        let name = input.machine_name.clone();
        observed(&self.metrics, Rpc::DeleteMachine, &name, async {
            self.provider.delete_machine(input).await?;
            Ok(Response::new(DeleteMachineResponse {
                last_known_state: Vec::new(),
            }))
        })
        .await
    }

    async fn get_machine_status(
        &self,
        request: Request<GetMachineStatusRequest>,
    ) -> Result<Response<GetMachineStatusResponse>, Status> {
        let input = decode::machine(request);
        let name = input.machine_name.clone();
        observed(&self.metrics, Rpc::GetMachineStatus, &name, async {
            let info = self.provider.get_machine_status(input).await?;
            Ok(Response::new(GetMachineStatusResponse {
                provider_id: info.provider_id,
                node_name: info.node_name,
            }))
        })
        .await
    }

    async fn list_machines(
        &self,
        request: Request<ListMachinesRequest>,
    ) -> Result<Response<ListMachinesResponse>, Status> {
        let input = decode::list(request);
        observed(&self.metrics, Rpc::ListMachines, "", async {
            let machines = self.provider.list_machines(input).await?;
            Ok(Response::new(ListMachinesResponse {
                machine_list: machines.into_iter().collect(),
            }))
        })
        .await
    }

    async fn shut_down_machine(
        &self,
        request: Request<ShutDownMachineRequest>,
    ) -> Result<Response<ShutDownMachineResponse>, Status> {
        let input = decode::machine(request);
        let name = input.machine_name.clone();
        observed(&self.metrics, Rpc::ShutDownMachine, &name, async {
            self.provider.shutdown_machine(input).await?;
            Ok(Response::new(ShutDownMachineResponse {
                last_known_state: Vec::new(),
            }))
        })
        .await
    }

    async fn get_volume_i_ds(
        &self,
        request: Request<GetVolumeIDsRequest>,
    ) -> Result<Response<GetVolumeIDsResponse>, Status> {
        let r = request.into_inner();
        observed(&self.metrics, Rpc::GetVolumeIds, "", async {
            let volume_i_ds = self.provider.get_volume_ids(&r.pv_spec_list)?;
            Ok(Response::new(GetVolumeIDsResponse { volume_i_ds }))
        })
        .await
    }
}
