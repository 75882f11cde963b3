//! The Metal API operations the driver uses, each with its method, path template and the
//! spec's `operationId` in one row, so the client that sends them, the simulator that serves
//! them and the fake that stands in for them cannot disagree on a name.
//!
//! The `operationId` is the name every log line, error, metric label (`endpoint`, `service`)
//! and simulator counter uses; the spec (`metal-openapi.bundled.yaml`) is its source.

use std::fmt;

use http::Method;
use uuid::Uuid;

/// The path of the API root on the real service: the spec's `servers[0].url` is
/// `https://api.equinix.com/metal/v1`.
pub const API_ROOT_PATH: &str = "/metal/v1";

/// One operation of the Metal device API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `POST /projects/{id}/devices`
    CreateDevice,
    /// `GET /projects/{id}/devices`
    FindProjectDevices,
    /// `GET /devices/{id}`
    FindDeviceById,
    /// `PUT /devices/{id}`
    UpdateDevice,
    /// `DELETE /devices/{id}`
    DeleteDevice,
    /// `POST /devices/{id}/actions`
    PerformAction,
}

/// The spec facts of one operation.
struct Row {
    method: Method,
    /// The path below the API root, `{id}` standing for the one path parameter.
    path: &'static str,
    operation_id: &'static str,
}

impl Operation {
    /// Every operation, in the order of the table.
    pub const ALL: [Self; 6] = [
        Self::CreateDevice,
        Self::FindProjectDevices,
        Self::FindDeviceById,
        Self::UpdateDevice,
        Self::DeleteDevice,
        Self::PerformAction,
    ];

    /// The table: one row per operation, as the spec declares it.
    fn row(self) -> Row {
        let (method, path, operation_id) = match self {
            Self::CreateDevice => (Method::POST, "/projects/{id}/devices", "createDevice"),
            Self::FindProjectDevices => {
                (Method::GET, "/projects/{id}/devices", "findProjectDevices")
            }
            Self::FindDeviceById => (Method::GET, "/devices/{id}", "findDeviceById"),
            Self::UpdateDevice => (Method::PUT, "/devices/{id}", "updateDevice"),
            Self::DeleteDevice => (Method::DELETE, "/devices/{id}", "deleteDevice"),
            Self::PerformAction => (Method::POST, "/devices/{id}/actions", "performAction"),
        };
        Row {
            method,
            path,
            operation_id,
        }
    }

    /// The HTTP method.
    pub fn method(self) -> Method {
        self.row().method
    }

    /// The path template below the API root (`/devices/{id}`), as routers match it.
    pub fn path_template(self) -> &'static str {
        self.row().path
    }

    /// The path for the project or device `id`.
    pub fn path(self, id: Uuid) -> String {
        self.path_template().replace("{id}", &id.to_string())
    }

    /// The spec's `operationId` (`findDeviceById`).
    pub fn operation_id(self) -> &'static str {
        self.row().operation_id
    }

    /// The operation a router matched, from the method and the path template, below the API
    /// root or below [`API_ROOT_PATH`] (`None` for a route that is not one of ours).
    pub fn from_route(method: &Method, path_template: &str) -> Option<Self> {
        let path_template = path_template
            .strip_prefix(API_ROOT_PATH)
            .unwrap_or(path_template);
        Self::ALL
            .into_iter()
            .find(|op| op.method() == method && op.path_template() == path_template)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.operation_id())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn routes_map_back_to_their_operation() {
        for op in Operation::ALL {
            assert_eq!(
                Operation::from_route(&op.method(), op.path_template()),
                Some(op)
            );
        }
        assert_eq!(
            Operation::from_route(&Method::PUT, "/metal/v1/devices/{id}"),
            Some(Operation::UpdateDevice)
        );
        assert_eq!(Operation::from_route(&Method::PATCH, "/devices/{id}"), None);
        assert_eq!(Operation::from_route(&Method::GET, "/_sim/stats"), None);
        let id = Uuid::nil();
        assert_eq!(
            Operation::PerformAction.path(id),
            format!("/devices/{id}/actions")
        );
        assert_eq!(Operation::FindDeviceById.to_string(), "findDeviceById");
    }

    /// The official spec beside the repository (`../shared/reference/metal-api`, or
    /// `$METAL_DRIVER_SHARED/reference/metal-api`), as the conformance suite finds it.
    fn bundled_spec() -> Option<PathBuf> {
        let shared = std::env::var_os("METAL_DRIVER_SHARED").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
            PathBuf::from,
        );
        let path = shared.join("reference/metal-api/metal-openapi.bundled.yaml");
        path.is_file().then_some(path)
    }

    #[test]
    fn every_row_matches_the_spec() {
        let Some(path) = bundled_spec() else {
            eprintln!("skipped: no Metal API spec beside the repository (set METAL_DRIVER_SHARED)");
            return;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let spec: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        for op in Operation::ALL {
            let method = op.method().as_str().to_ascii_lowercase();
            let declared = &spec["paths"][op.path_template()][method.as_str()]["operationId"];
            assert_eq!(
                declared.as_str(),
                Some(op.operation_id()),
                "{} {}",
                op.method(),
                op.path_template()
            );
        }
    }
}
