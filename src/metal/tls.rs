//! The TLS settings of every reqwest client in the crate: rustls on the *ring* crypto
//! provider, trusting the webpki (Mozilla) root certificates compiled into the binary.
//!
//! reqwest is built without a crypto provider of its own (its `rustls` feature would bring
//! aws-lc-rs, a C build, and the platform's root store). A client made by
//! `reqwest::Client::new()` would then need a process-wide default provider and panic
//! without one, so every client starts from [`http_client_builder`] instead: it hands
//! reqwest a finished `rustls::ClientConfig`, and no process-wide state is involved.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, crypto::ring};

/// The ALPN protocols offered, in order of preference: HTTP/2, then HTTP/1.1.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The rustls client configuration: ring, TLS 1.2 and 1.3, the webpki roots, no client
/// certificate, SNI on, and ALPN offering `h2` and `http/1.1`.
pub fn rustls_config() -> ClientConfig {
    let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        // ring's default provider supports every safe default version.
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config
}

/// A reqwest client builder with [`rustls_config`] as its TLS backend. Use it wherever a
/// `reqwest::Client` is made (`reqwest::Client::new()` would panic: no crypto provider).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(rustls_config())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_ring_with_sni_and_offers_h2_then_http1() {
        let config = rustls_config();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(config.enable_sni);
        let suites = |p: &rustls::crypto::CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            suites(config.crypto_provider()),
            suites(&ring::default_provider())
        );
    }

    #[test]
    fn builder_accepts_the_preconfigured_backend() {
        // reqwest recognises a `rustls::ClientConfig` only of its own rustls version and
        // errors at build time otherwise.
        http_client_builder()
            .build()
            .expect("reqwest takes the rustls config");
    }
}
