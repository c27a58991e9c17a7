//! TLS for the listeners (rustls with the aws-lc-rs provider): certificates loaded from
//! PEM files and reloaded without a restart, server configs for the public and S3
//! listeners and, with a cluster CA, mutual TLS between nodes.
//!
//! ```text
//!   tls-reload thread: every reload_interval_secs (or at once on SIGHUP) re-reads each
//!   certificate and key file; when they changed and parse, swaps them in
//!        │ ArcSwap<CertifiedKey>
//!        v
//!   shard threads: each TLS handshake asks the CertStore (a rustls cert resolver) for the
//!   current certificate; connections already open keep theirs
//! ```
//!
//! Only TLS 1.3 and 1.2 are offered; ALPN offers `h2` then `http/1.1`. A reload that
//! fails (a half-written file, a key that does not match) is logged and the certificate
//! in use stays. Imports nothing of the server: the listeners (`server`) and the peer
//! client (`cluster::peer`) both use it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

/// ALPN protocols offered, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why TLS material could not be loaded. Retrying helps only once the files are fixed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{0}")]
    Rustls(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[expect(
    clippy::disallowed_methods,
    reason = "start-up and the tls-reload thread only, never a shard thread"
)]
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            path: path.to_path_buf(),
            detail: format!("not a PEM certificate list: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Parse {
            path: path.to_path_buf(),
            detail: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Reads a CA bundle (PEM, one or more certificates) into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = read(path)?;
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(path, &pem)? {
        roots.add(cert).map_err(|e| TlsError::Parse {
            path: path.to_path_buf(),
            detail: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// A certificate chain and its private key from PEM files, as loaded.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' bytes, to notice a change.
    source: (Vec<u8>, Vec<u8>),
}

fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain = parse_certs(cert, &cert_pem)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Parse {
        path: key.to_path_buf(),
        detail: format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
    })?;
    let certified =
        CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::Parse {
            path: key.to_path_buf(),
            detail: format!("does not go with {}: {e}", cert.display()),
        })?;
    Ok(Loaded {
        key: Arc::new(certified),
        source: (cert_pem, key_pem),
    })
}

/// SHA-256 of the leaf certificate, hex: what the reload log shows.
fn fingerprint(k: &CertifiedKey) -> String {
    k.cert
        .first()
        .map(|c| hex::encode(Sha256::digest(c.as_ref())))
        .unwrap_or_default()
}

/// One certificate and key pair, reloadable. Serves as the rustls certificate resolver
/// of every listener that uses it (and as the client certificate for mutual TLS).
#[derive(Debug)]
pub struct CertStore {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The bytes the current certificate came from.
    source: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl CertStore {
    /// Loads the pair (start-up: an error stops the node).
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let l = load(cert, key)?;
        tracing::info!(cert = %cert.display(), sha256 = %fingerprint(&l.key), "TLS certificate loaded");
        Ok(Arc::new(CertStore {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            current: ArcSwap::new(l.key),
            source: Mutex::new(l.source),
        }))
    }

    /// Re-reads the files; swaps the certificate in when they changed and load. Returns
    /// whether it changed. A failure keeps the certificate in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let l = load(&self.cert_path, &self.key_path)?;
        let mut source = self.source.lock().unwrap_or_else(|e| e.into_inner());
        if *source == l.source {
            return Ok(false);
        }
        let (old, new) = (fingerprint(&self.current.load()), fingerprint(&l.key));
        self.current.store(l.key);
        *source = l.source;
        tracing::info!(cert = %self.cert_path.display(), old_sha256 = %old, sha256 = %new, "TLS certificate reloaded");
        Ok(true)
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A client-side view of the same store, for mutual TLS.
#[derive(Debug)]
struct ClientCert(Arc<CertStore>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server config for a public listener: TLS 1.3 and 1.2, ALPN h2 and http/1.1, the
/// certificate from `store` (reloaded in place).
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Mutual TLS between nodes: both sides present a certificate signed by the cluster CA
/// and accept only peers whose certificate is.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl ClusterTls {
    pub fn new(store: Arc<CertStore>, ca: &Path) -> Result<ClusterTls, TlsError> {
        let roots = Arc::new(load_roots(ca)?);
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| TlsError::Rustls(format!("cluster CA {}: {e}", ca.display())))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(store.clone());
        // Peers speak h2; HTTP/1.1 stays for tools (the listener serves both).
        server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        let server_verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError::Rustls(format!("cluster CA {}: {e}", ca.display())))?;
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyNameOfTheCa(server_verifier)))
            .with_client_cert_resolver(Arc::new(ClientCert(store)));
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClusterTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// Peers are dialled by the address they gossip, which their certificates need not
/// name: any certificate the cluster CA signed is a member's. Everything else (chain,
/// validity, signatures, key usage) is checked as usual. The cluster CA must therefore
/// sign nothing but node certificates.
#[derive(Debug)]
struct AnyNameOfTheCa(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyNameOfTheCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // webpki checks the name last, after the chain to the cluster CA.
            Err(rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The tls-reload thread: re-reads every store's files every `interval`, and at once on
/// SIGHUP. Stops when dropped.
pub struct Reloader {
    wake: std::sync::mpsc::Sender<Wake>,
    signals: signal_hook::iterator::Handle,
    threads: Vec<JoinHandle<()>>,
}

enum Wake {
    Hup,
    Stop,
}

impl Reloader {
    pub fn start(stores: Vec<Arc<CertStore>>, interval: Duration) -> anyhow::Result<Reloader> {
        use anyhow::Context;
        use std::sync::mpsc::RecvTimeoutError;
        let (wake, rx) = std::sync::mpsc::channel::<Wake>();
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
            .context("installing the SIGHUP handler")?;
        let handle = signals.handle();
        let hup = wake.clone();
        let sig_thread = std::thread::Builder::new()
            .name("tls-sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    if hup.send(Wake::Hup).is_err() {
                        return;
                    }
                }
            })
            .context("spawning the SIGHUP thread")?;
        let reload_thread = std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || loop {
                let sighup = match rx.recv_timeout(interval) {
                    Ok(Wake::Hup) => true,
                    Err(RecvTimeoutError::Timeout) => false,
                    Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                };
                for s in &stores {
                    match s.reload() {
                        Ok(false) if sighup => tracing::info!(
                            cert = %s.cert_path.display(),
                            "SIGHUP: TLS certificate files unchanged"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(
                            error = %e,
                            "reloading the TLS certificate failed; the one in use stays"
                        ),
                    }
                }
            })
            .context("spawning the tls-reload thread")?;
        Ok(Reloader {
            wake,
            signals: handle,
            threads: vec![sig_thread, reload_thread],
        })
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.signals.close();
        let _ = self.wake.send(Wake::Stop);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().to_vec())
    }

    #[test]
    fn reload_swaps_only_complete_matching_pairs() {
        let tmp = tempfile::tempdir().unwrap();
        let (cert, key, first) = pair(tmp.path(), "first");
        let store = CertStore::open(&cert, &key).unwrap();
        assert_eq!(store.current().cert[0].as_ref(), &first[..]);
        assert!(!store.reload().unwrap(), "unchanged files: nothing to do");

        // A new certificate with the old key (written first, as a renewal tool might):
        // refused, the old pair stays.
        let (cert2, key2, second) = pair(tmp.path(), "second");
        std::fs::copy(&cert2, &cert).unwrap();
        let e = store.reload().unwrap_err();
        assert!(e.to_string().contains("does not go with"), "{e}");
        assert_eq!(store.current().cert[0].as_ref(), &first[..]);
        // Then the key: the new pair is in.
        std::fs::copy(&key2, &key).unwrap();
        assert!(store.reload().unwrap());
        assert_eq!(store.current().cert[0].as_ref(), &second[..]);

        // Garbage or a missing file: refused with the file named, the pair stays.
        std::fs::write(&cert, "not a certificate").unwrap();
        let e = store.reload().unwrap_err();
        assert!(e.to_string().contains(&cert.display().to_string()), "{e}");
        std::fs::remove_file(&key).unwrap();
        assert!(matches!(store.reload(), Err(TlsError::Read { .. })));
        assert_eq!(store.current().cert[0].as_ref(), &second[..]);
        // Secrets never show in errors: the key's PEM is not in any message.
        assert!(!format!("{e:?}").contains("PRIVATE KEY"));
    }
}
