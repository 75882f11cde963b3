//! Transport security: TLS on the gRPC port and mutual TLS, with certificates made at test
//! time. A TLS client works (TCP and unix socket), a plaintext client is refused, and under
//! mutual TLS a client without a certificate, or with one from another CA, is refused.

use std::{sync::Arc, time::Duration};

use metal_driver::{
    cmi::{
        calls::MachineRef,
        client::{ClientTls, ClientTlsArgs, CmiClient},
        endpoint::Endpoint,
        server::{Running, ServeError, ServerConfig, ServerTls, start},
    },
    metal::{
        Call, DeviceApi,
        client::{ClientConfig, MetalClient},
    },
    provider::{Provider, ProviderConfig},
    sim::{self, SimArgs, SimHandle},
    telemetry::Metrics,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio_util::sync::CancellationToken;

use crate::support::{secrets, spec};

/// A CA and the PEM of certificates it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> Vec<u8> {
        self.issuer.pem().into_bytes()
    }

    /// (certificate PEM, key PEM) for `names` (DNS names or IP addresses).
    fn leaf(&self, names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    }
}

struct Tls {
    sim: SimHandle,
    server: Running,
    stop: CancellationToken,
}

impl Tls {
    /// A driver on loopback TCP serving a leaf of `ca` for localhost and 127.0.0.1, asking for
    /// client certificates of `client_ca` when given.
    async fn loopback(ca: &Ca, client_ca: Option<&Ca>) -> Self {
        let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
        let tls = ServerTls {
            cert_pem: cert,
            key_pem: key,
            client_ca_pem: client_ca.map(Ca::pem),
        };
        Self::start(ServerConfig::loopback().endpoint, tls)
            .await
            .expect("TLS server starts")
    }

    async fn start(endpoint: Endpoint, tls: ServerTls) -> Result<Self, ServeError> {
        let sim = sim::spawn(SimArgs::for_tests()).await.unwrap();
        let config = ClientConfig {
            base_url: sim.base_url(),
            ..ClientConfig::default()
        };
        let provider = Arc::new(Provider::new(
            MetalClient::new(config, None).unwrap(),
            ProviderConfig::default(),
        ));
        let stop = CancellationToken::new();
        let server = start(
            ServerConfig {
                endpoint,
                tls: Some(tls),
                ..ServerConfig::loopback()
            },
            provider,
            Metrics::new(),
            stop.clone(),
        )
        .await?;
        Ok(Self { sim, server, stop })
    }

    fn endpoint(&self) -> String {
        self.server.endpoint.to_string()
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.wait().await;
        self.sim.shutdown().await;
    }
}

fn client_tls(ca: &Ca, identity: Option<(Vec<u8>, Vec<u8>)>) -> ClientTls {
    ClientTls {
        ca_pem: ca.pem(),
        identity,
        server_name: None,
    }
}

/// Whether an Identity call over `client` succeeds (connect errors count as refusals).
async fn probe(endpoint: &str, tls: Option<&ClientTls>) -> Result<(), String> {
    let cmi = CmiClient::connect_tls(endpoint, Duration::from_secs(5), tls)
        .await
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(Duration::from_secs(10), cmi.get_plugin_info())
        .await
        .map_err(|_| "no answer within 10 s (hang)".to_owned())?;
    answer
        .map(|_| ())
        .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
}

#[tokio::test]
async fn tls_serves_tls_clients_and_refuses_plaintext() {
    let ca = Ca::new("metal-driver test CA");
    let env = Tls::loopback(&ca, None).await;
    let tls = client_tls(&ca, None);

    let cmi = CmiClient::connect_tls(&env.endpoint(), Duration::from_secs(30), Some(&tls))
        .await
        .expect("TLS connect");
    let ready = cmi.probe().await.expect("Probe over TLS");
    assert_eq!(ready, Some(true));
    // A real machine call over TLS.
    let (provider_spec, secrets) = (spec().to_string().into_bytes(), secrets());
    let created = cmi
        .create_machine(MachineRef::new("it-tls", &provider_spec, &secrets))
        .await
        .expect("CreateMachine over TLS");
    assert!(created.provider_id.starts_with("equinixmetal://"));

    let plain = probe(&env.endpoint(), None).await;
    assert!(
        plain.is_err(),
        "a plaintext client must be refused by a TLS server"
    );

    let other = Ca::new("someone else's CA");
    let wrong_ca = probe(&env.endpoint(), Some(&client_tls(&other, None))).await;
    assert!(
        wrong_ca.is_err(),
        "a client must not accept a certificate from a CA it does not trust"
    );

    let wrong_name = probe(
        &env.endpoint(),
        Some(&ClientTls {
            server_name: Some("driver.example".into()),
            ..tls.clone()
        }),
    )
    .await;
    assert!(wrong_name.is_err(), "the server name is verified");
    env.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let env = Tls::loopback(&server_ca, Some(&client_ca)).await;

    let good = client_tls(&server_ca, Some(client_ca.leaf(&["metal-controller"])));
    probe(&env.endpoint(), Some(&good))
        .await
        .expect("a client with a certificate from the client CA is served");

    let anonymous = probe(&env.endpoint(), Some(&client_tls(&server_ca, None))).await;
    assert!(
        anonymous.is_err(),
        "mTLS: a client without a certificate must be refused"
    );

    let rogue = Ca::new("rogue CA");
    let forged = probe(
        &env.endpoint(),
        Some(&client_tls(
            &server_ca,
            Some(rogue.leaf(&["metal-controller"])),
        )),
    )
    .await;
    assert!(
        forged.is_err(),
        "mTLS: a certificate from an untrusted CA must be refused"
    );

    assert!(
        probe(&env.endpoint(), None).await.is_err(),
        "plaintext refused under mTLS"
    );
    env.stop().await;
}

#[tokio::test]
async fn tls_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("uds CA");
    let (cert, key) = ca.leaf(&["localhost"]);
    let env = Tls::start(
        Endpoint::Unix(dir.path().join("cmi.sock")),
        ServerTls {
            cert_pem: cert,
            key_pem: key,
            client_ca_pem: None,
        },
    )
    .await
    .expect("TLS on a unix socket starts");
    probe(&env.endpoint(), Some(&client_tls(&ca, None)))
        .await
        .expect("TLS over the unix socket");
    assert!(
        probe(&env.endpoint(), None).await.is_err(),
        "plaintext refused on the TLS unix socket"
    );
    env.stop().await;
}

#[tokio::test]
async fn bad_tls_material_is_a_clear_startup_error() {
    let ca = Ca::new("CA");
    let (cert, _) = ca.leaf(&["localhost"]);
    let err = Tls::start(
        ServerConfig::loopback().endpoint,
        ServerTls {
            cert_pem: cert,
            key_pem: b"-----BEGIN PRIVATE KEY-----\nnot a key\n".to_vec(),
            client_ca_pem: None,
        },
    )
    .await
    .err()
    .expect("a broken key must stop the start-up");
    assert!(matches!(err, ServeError::Tls(_)), "{err}");
    assert!(
        !err.to_string().contains("not a key"),
        "key material is not echoed: {err}"
    );

    // The client flags: files are read, and half a client identity is refused.
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let loaded = ClientTlsArgs {
        tls_ca: Some(ca_path.clone()),
        ..ClientTlsArgs::default()
    }
    .load()
    .unwrap()
    .unwrap();
    assert_eq!(loaded.ca_pem, ca.pem());
    assert!(
        ClientTlsArgs::default().load().unwrap().is_none(),
        "no flags, no TLS"
    );
    let half = ClientTlsArgs {
        tls_ca: Some(ca_path),
        tls_cert: Some(dir.path().join("c.pem")),
        ..ClientTlsArgs::default()
    };
    assert!(half.load().is_err());
    let missing = ClientTlsArgs {
        tls_ca: Some(dir.path().join("nope.pem")),
        ..ClientTlsArgs::default()
    };
    assert!(
        missing.load().unwrap_err().to_string().contains("--tls-ca"),
        "the error names the flag"
    );
    let secret = format!("{:?}", client_tls(&ca, Some(ca.leaf(&["x"]))));
    assert!(
        !secret.contains("PRIVATE KEY"),
        "Debug hides the client key: {secret}"
    );
}

#[tokio::test]
async fn machine_cli_speaks_mutual_tls_to_the_driver() {
    use clap::Parser;
    use metal_driver::machine_cli::{MachineArgs, execute};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        machine: MachineArgs,
    }

    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let env = Tls::loopback(&server_ca, Some(&client_ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let (client_cert, client_key) = client_ca.leaf(&["metal-cli"]);
    let path = |name: &str, pem: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let (ca, crt, k) = (
        path("ca.pem", &server_ca.pem()),
        path("client.pem", &client_cert),
        path("client.key", &client_key),
    );
    let class = concat!(env!("CARGO_MANIFEST_DIR"), "/kubernetes/machine-class.yaml");
    let secret = concat!(env!("CARGO_MANIFEST_DIR"), "/kubernetes/secret.yaml");
    let endpoint = env.endpoint();
    let base = [
        "machine",
        "--endpoint",
        endpoint.as_str(),
        "--class",
        class,
        "--secret",
        secret,
    ];

    let with_identity = Cli::try_parse_from(base.iter().copied().chain([
        "--tls-ca",
        &ca,
        "--tls-cert",
        &crt,
        "--tls-key",
        &k,
        "list",
    ]))
    .unwrap();
    execute(&with_identity.machine)
        .await
        .expect("list over mutual TLS");

    let without_identity =
        Cli::try_parse_from(base.iter().copied().chain(["--tls-ca", &ca, "list"])).unwrap();
    assert!(
        execute(&without_identity.machine).await.is_err(),
        "the driver refuses a CLI without a client certificate"
    );
    env.stop().await;
}

#[tokio::test]
async fn metal_client_refuses_a_server_certificate_outside_the_webpki_roots() {
    // The driver's TLS port stands in for an HTTPS Metal API whose certificate comes from a
    // CA the client does not trust: the handshake must fail on the certificate, not pass.
    let ca = Ca::new("metal-driver test CA");
    let env = Tls::loopback(&ca, None).await;
    let Endpoint::Tcp(addr) = env.server.endpoint.clone() else {
        panic!("a loopback TCP endpoint");
    };
    let client = MetalClient::new(
        ClientConfig {
            base_url: format!("https://{addr}/metal/v1"),
            max_retries: 0,
            ..ClientConfig::default()
        },
        None,
    )
    .expect("the client builds");
    let err = client
        .get_device(&Call::new("token".to_owned().into()), uuid::Uuid::new_v4())
        .await
        .expect_err("an untrusted certificate is refused");
    let text = err.to_string();
    assert!(
        matches!(err, metal_driver::metal::Error::Transport { .. }),
        "{text}"
    );
    assert!(text.contains("UnknownIssuer"), "{text}");
    env.stop().await;
}
