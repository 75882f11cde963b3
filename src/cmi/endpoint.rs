//! `CMI_ENDPOINT`: where the driver listens and the client connects.
//!
//! CMI specifies `tcp://host:port`; we also accept `unix:///path`, the usual choice when the
//! driver and its client share a Pod (an `emptyDir` socket is reachable by nothing else).

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// A parsed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(String),
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {0:?}: expected tcp://HOST:PORT or unix:///ABSOLUTE/PATH")]
    Malformed(String),
    #[error("endpoint {endpoint}: {source}")]
    Io {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "endpoint {0}: the socket's directory is writable by other users; refusing to create a socket anyone could replace"
    )]
    WorldWritable(String),
}

impl Endpoint {
    pub fn parse(raw: &str) -> Result<Self, EndpointError> {
        let raw = raw.trim();
        if let Some(rest) = raw.strip_prefix("tcp://") {
            let ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !port.is_empty() && port.parse::<u16>().is_ok()
            });
            return if ok {
                Ok(Self::Tcp(rest.to_owned()))
            } else {
                Err(EndpointError::Malformed(raw.into()))
            };
        }
        if let Some(rest) = raw.strip_prefix("unix://") {
            let path = Path::new(rest);
            return if path.is_absolute() && rest.len() > 1 {
                Ok(Self::Unix(path.to_owned()))
            } else {
                Err(EndpointError::Malformed(raw.into()))
            };
        }
        Err(EndpointError::Malformed(raw.into()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// A bound listener, and the address it really got (port 0 resolved).
pub enum Listener {
    Tcp(tokio::net::TcpListener, SocketAddr),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Listener {
    /// The real address, in endpoint form: what the `listening on` line prints.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Self::Tcp(_, addr) => Endpoint::Tcp(addr.to_string()),
            Self::Unix(_, path) => Endpoint::Unix(path.clone()),
        }
    }
}

/// Binds `endpoint`. A unix socket gets mode 0600 and its directory must not be writable by
/// other users; a stale socket file from a previous run is replaced.
pub async fn bind(endpoint: &Endpoint) -> Result<Listener, EndpointError> {
    let io = |source| EndpointError::Io {
        endpoint: endpoint.to_string(),
        source,
    };
    match endpoint {
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr.as_str())
                .await
                .map_err(io)?;
            let local = listener.local_addr().map_err(io)?;
            Ok(Listener::Tcp(listener, local))
        }
        Endpoint::Unix(path) => {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            let dir = path.parent().unwrap_or(Path::new("/"));
            let meta = std::fs::metadata(dir).map_err(io)?;
            let mode = meta.permissions().mode();
            // World-writable without the sticky bit: anyone could swap the socket.
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                return Err(EndpointError::WorldWritable(endpoint.to_string()));
            }
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(io)?,
                Ok(_) => {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "path exists and is not a socket",
                    )));
                }
                Err(_) => {}
            }
            let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
            Ok(Listener::Unix(listener, path.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_we_support() {
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:0").unwrap(),
            Endpoint::Tcp("127.0.0.1:0".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://[::1]:8080").unwrap(),
            Endpoint::Tcp("[::1]:8080".into())
        );
        assert_eq!(
            Endpoint::parse("unix:///run/cmi.sock").unwrap(),
            Endpoint::Unix("/run/cmi.sock".into())
        );
        for bad in [
            "",
            "127.0.0.1:80",
            "tcp://",
            "tcp://host",
            "tcp://host:x",
            "unix://rel.sock",
            "http://a:1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[tokio::test]
    async fn unix_socket_is_owner_only_and_replaces_stale() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmi.sock");
        let ep = Endpoint::Unix(path.clone());
        drop(bind(&ep).await.unwrap());
        let l = bind(&ep).await.expect("a stale socket is replaced");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            l.endpoint().to_string(),
            format!("unix://{}", path.display())
        );
    }

    #[tokio::test]
    async fn refuses_world_writable_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = bind(&Endpoint::Unix(dir.path().join("s.sock")))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, EndpointError::WorldWritable(_)), "{err}");
    }

    #[tokio::test]
    async fn tcp_port_zero_reports_real_port() {
        let l = bind(&Endpoint::parse("tcp://127.0.0.1:0").unwrap())
            .await
            .unwrap();
        let Endpoint::Tcp(addr) = l.endpoint() else {
            panic!()
        };
        assert!(!addr.ends_with(":0"), "{addr}");
    }
}
