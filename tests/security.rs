//! Transport security and access control, over real sockets against nodes started
//! in-process: the cluster secret (gossip and node-to-node requests), TLS on the public
//! and S3 listeners (ALPN, versions, certificate reload), mutual TLS between nodes, and
//! JWT on the native API; and the node-to-node API's input checks.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki;
use common::*;
use http::{HeaderMap, Method};
use nearcache::cluster::auth::RequestAuth;
use nearcache::config::{Config, Secret};
use nearcache_membership::auth::ClusterSecret;

const SECRET: &str = "test-cluster-secret-0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(30);

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node of a cluster on loopback with the embedded origin (no S3 needed here).
fn cluster_node(tag: &str, secret: Option<&str>, seed: Option<&TestNode>) -> TestNode {
    let seed = seed.map(|s| cluster_addr(s).to_string());
    TestNode::start_with(tag, |c: &mut Config| {
        local_origin(c);
        c.cluster.listen = Some("127.0.0.1:0".parse().unwrap());
        c.cluster.gossip_interval_ms = 100;
        c.cluster.secret = secret.map(|s| Secret(s.into()));
        c.cluster.join = seed.into_iter().collect();
    })
}

fn local_origin(c: &mut Config) {
    c.origin.bucket = None;
    c.origin.endpoint = None;
    c.origin.access_key = None;
    c.origin.secret_key = None;
    c.origin.create_bucket = false;
}

fn cluster_addr(n: &TestNode) -> std::net::SocketAddr {
    n.handle
        .as_ref()
        .unwrap()
        .node
        .cluster
        .as_ref()
        .unwrap()
        .addr
}

fn cluster(n: &TestNode) -> &Arc<nearcache::cluster::Cluster> {
    n.handle.as_ref().unwrap().node.cluster.as_ref().unwrap()
}

fn alive(n: &TestNode) -> Vec<String> {
    cluster(n).view().alive().map(|m| m.id.clone()).collect()
}

/// A node-to-node request sent by hand: GET of one journal change of shard 0.
fn peer_get(to: &TestNode, headers: &HeaderMap) -> (u16, serde_json::Value) {
    let url = format!("http://{}{}", cluster_addr(to), CHANGES);
    let r = client().get(url).headers(headers.clone()).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or_default())
}

const CHANGES: &str = "/_nc/v1/changes?shard=0&after=0&limit=1";

/// A level-0 write through `writer` read back through `reader` (proxied to the owner or
/// served from a replica: either way node-to-node).
fn write_then_read(writer: &TestNode, reader: &TestNode, body: &[u8]) {
    let id = new_id(writer);
    let level0 = [("X-Meta-ConsistencyLevel", "0")];
    assert_eq!(put(writer, &id, body.to_vec(), &level0).status(), 200);
    let got = client()
        .get(reader.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().unwrap().as_ref(), body);
}

/// What a node sends (signed when `auth` is given), with the headers reqwest would add
/// after signing already in place.
fn peer_headers(from: &str, cluster: &str, auth: Option<&RequestAuth>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", "peer".parse().unwrap());
    h.insert("accept", "*/*".parse().unwrap());
    h.insert("x-nc-from", from.parse().unwrap());
    h.insert("x-nc-cluster", cluster.parse().unwrap());
    if let Some(a) = auth {
        a.sign(&Method::GET, CHANGES, &mut h);
    }
    h
}

fn request_auth(secret: &str) -> RequestAuth {
    RequestAuth::new(
        &ClusterSecret::new(secret.as_bytes()).unwrap(),
        Duration::from_secs(60),
    )
}

#[test]
fn cluster_secret_keeps_outsiders_out_and_refuses_replays() {
    let a = cluster_node("sec-a", Some(SECRET), None);
    let b = cluster_node("sec-b", Some(SECRET), Some(&a));
    let x = cluster_node("sec-x", Some("another-secret-0123456789abcdef"), Some(&a));
    let p = cluster_node("sec-p", None, Some(&a));
    wait_until("a and b see each other", || {
        alive(&a).len() == 2 && alive(&b).len() == 2
    });
    // The outsiders keep announcing to a: wait until a has refused several of each.
    wait_until("a refuses the outsiders' gossip", || {
        cluster(&a).membership.metrics().dropped_unauthenticated >= 4
    });
    for n in [&a, &b] {
        let ids = alive(n);
        for outsider in [&x, &p] {
            assert!(
                !ids.contains(&cluster(outsider).self_id),
                "an outsider became a member"
            );
        }
    }
    assert_eq!(alive(&x).len(), 1);
    assert_eq!(alive(&p).len(), 1);

    // Node-to-node requests: unsigned, or signed with another secret, get 401 with a
    // reason that shows no signature; each is counted.
    let from = cluster(&b).self_id.clone();
    let before = a.metric("nearcache_cluster_unauthenticated_requests_total");
    let (status, body) = peer_get(&a, &peer_headers(&from, "nearcache", None));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthenticated");
    assert!(
        body["detail"].as_str().unwrap().contains("x-nc-ts"),
        "{body}"
    );
    let wrong = request_auth("another-secret-0123456789abcdef");
    let h = peer_headers(&from, "nearcache", Some(&wrong));
    let (status, body) = peer_get(&a, &h);
    assert_eq!(status, 401, "{body}");
    let sig = h["x-nc-sig"].to_str().unwrap();
    assert!(
        !body.to_string().contains(sig),
        "the refusal echoes the signature"
    );
    assert!(!body.to_string().contains("another-secret"));
    assert_eq!(
        a.metric("nearcache_cluster_unauthenticated_requests_total") - before,
        2.0
    );

    // Signed with the secret: served once; the same request again is a replay.
    let right = request_auth(SECRET);
    let h = peer_headers(&from, "nearcache", Some(&right));
    let (status, body) = peer_get(&a, &h);
    assert_eq!(status, 200, "{body}");
    let (status, body) = peer_get(&a, &h);
    assert_eq!(status, 401, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("already seen"),
        "{body}"
    );
    assert_eq!(a.metric("nearcache_cluster_replayed_requests_total"), 1.0);
    // A signed header changed on the way breaks the signature.
    let mut h = peer_headers(&from, "nearcache", Some(&right));
    h.insert("x-nc-from", cluster(&x).self_id.parse().unwrap());
    assert_eq!(peer_get(&a, &h).0, 401);

    // The members still work together through signed requests: a write through b is
    // readable through a (proxied to the owner, or replicated).
    write_then_read(&b, &a, b"signed");
    assert_eq!(
        a.metric("nearcache_cluster_unauthenticated_requests_total")
            + b.metric("nearcache_cluster_unauthenticated_requests_total"),
        3.0,
        "no genuine request was refused"
    );
}

// ---- TLS ----------------------------------------------------------------------------

/// Writes a certificate pair where a node reads it (each file replaced atomically).
fn install(leaf: &pki::Leaf, cert: &std::path::Path, key: &std::path::Path) {
    for (path, text) in [(key, &leaf.key_pem), (cert, &leaf.cert_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

mod tlsc {
    //! A TLS client on a tokio runtime, to look at what the server negotiates.
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    pub fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    pub fn config(
        ca_pem: &str,
        alpn: &[&[u8]],
        versions: &[&'static SupportedProtocolVersion],
        client: Option<(&str, &str)>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let b = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
        let mut cfg = match client {
            None => b.with_no_client_auth(),
            Some((cert, key)) => b
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .map(|c| c.unwrap())
                        .collect(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    pub async fn connect(
        addr: std::net::SocketAddr,
        cfg: Arc<ClientConfig>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// The status line of `GET path` over HTTP/1.1 on `s`.
    pub async fn h1_get(mut s: TlsStream<TcpStream>, path: &str) -> std::io::Result<String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).to_string();
        Ok(text.lines().next().unwrap_or_default().to_string())
    }

    /// The status of `GET path` over HTTP/2 on `s`.
    pub async fn h2_get(s: TlsStream<TcpStream>, path: &str) -> u16 {
        let (mut client, conn) = h2::client::handshake(s).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://localhost{path}"))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        resp.await.unwrap().status().as_u16()
    }

    /// The leaf certificate the server presented.
    pub fn peer_leaf(s: &TlsStream<TcpStream>) -> Vec<u8> {
        s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }
}

/// A node whose public and S3 listeners use TLS with `leaf`, files in `dir`.
fn tls_node(tag: &str, dir: &std::path::Path, leaf: &pki::Leaf, reload_secs: u64) -> TestNode {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    install(leaf, &cert, &key);
    TestNode::start_with(tag, |c: &mut Config| {
        local_origin(c);
        c.server.shards = 1;
        c.tls.cert = Some(cert);
        c.tls.key = Some(key);
        c.tls.reload_interval_secs = reload_secs;
    })
}

fn addrs(n: &TestNode) -> (std::net::SocketAddr, std::net::SocketAddr) {
    let h = n.handle.as_ref().unwrap();
    (h.addr, h.s3_addr)
}

#[test]
fn tls_listeners_negotiate_alpn_and_versions() {
    use rustls::version::{TLS12, TLS13};
    let tmp = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("test CA");
    let leaf = ca.leaf("node");
    let node = tls_node("tls-alpn", tmp.path(), &leaf, 10);
    let (public, s3) = addrs(&node);
    let rt = tlsc::rt();
    rt.block_on(async {
        let both: &[&'static rustls::SupportedProtocolVersion] = &[&TLS13, &TLS12];
        // ALPN h2: HTTP/2 over TLS 1.3.
        let s = tlsc::connect(public, tlsc::config(&ca.pem(), &[b"h2"], both, None))
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            s.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(tlsc::peer_leaf(&s), leaf.der);
        assert_eq!(tlsc::h2_get(s, "/healthz").await, 200);
        // ALPN http/1.1.
        let s = tlsc::connect(public, tlsc::config(&ca.pem(), &[b"http/1.1"], both, None))
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(
            tlsc::h1_get(s, "/healthz").await.unwrap(),
            "HTTP/1.1 200 OK"
        );
        // No ALPN at all: HTTP/1.1 still works.
        let s = tlsc::connect(public, tlsc::config(&ca.pem(), &[], both, None))
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), None);
        assert_eq!(
            tlsc::h1_get(s, "/healthz").await.unwrap(),
            "HTTP/1.1 200 OK"
        );
        // TLS 1.2 only.
        let s = tlsc::connect(public, tlsc::config(&ca.pem(), &[b"h2"], &[&TLS12], None))
            .await
            .unwrap();
        assert_eq!(
            s.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_eq!(tlsc::h2_get(s, "/healthz").await, 200);
        // The S3 listener: TLS too (an unsigned request is refused by S3 auth, over TLS).
        let s = tlsc::connect(s3, tlsc::config(&ca.pem(), &[b"http/1.1"], both, None))
            .await
            .unwrap();
        assert_eq!(
            tlsc::h1_get(s, "/").await.unwrap(),
            "HTTP/1.1 403 Forbidden"
        );
        // A client that does not trust the CA fails the handshake.
        let other = pki::Ca::new("other CA");
        assert!(
            tlsc::connect(public, tlsc::config(&other.pem(), &[b"h2"], both, None))
                .await
                .is_err()
        );
    });
    // A TLS 1.1 ClientHello (no supported_versions extension) gets a fatal alert
    // (rustls says handshake_failure) instead of a ServerHello.
    let mut hello = vec![0x03, 0x02];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.extend_from_slice(&[0x00, 0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f, 0x01, 0x00]);
    let mut hs = vec![0x01, 0x00, 0x00, hello.len() as u8];
    hs.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    record.extend_from_slice(&hs);
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(public).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(&record).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(answer.len() >= 7, "{answer:02x?}");
    assert_eq!(answer[0], 0x15, "an alert record: {answer:02x?}");
    assert_eq!(answer[5], 2, "fatal: {answer:02x?}");
    assert!(
        matches!(answer[6], 40 | 70),
        "handshake_failure or protocol_version: {answer:02x?}"
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut tcp = std::net::TcpStream::connect(public).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{answer:02x?}");
}

/// Connects until the server presents `want` (the deadline fails the test).
fn wait_for_cert(rt: &tokio::runtime::Runtime, addr: std::net::SocketAddr, ca: &str, want: &[u8]) {
    let cfg = tlsc::config(ca, &[b"h2"], &[&rustls::version::TLS13], None);
    wait_until("the new certificate is served", || {
        rt.block_on(async {
            match tlsc::connect(addr, cfg.clone()).await {
                Ok(s) => tlsc::peer_leaf(&s) == want,
                Err(_) => false,
            }
        })
    });
}

#[test]
fn tls_certificates_reload_on_file_change_and_sighup() {
    let ca = pki::Ca::new("test CA");
    let rt = tlsc::rt();
    // File change, picked up by the periodic check.
    let tmp = tempfile::tempdir().unwrap();
    let first = ca.leaf("first");
    let node = tls_node("tls-reload", tmp.path(), &first, 1);
    let (public, s3) = addrs(&node);
    wait_for_cert(&rt, public, &ca.pem(), &first.der);
    // A connection open across the reload keeps working.
    let open = rt
        .block_on(tlsc::connect(
            public,
            tlsc::config(&ca.pem(), &[b"h2"], &[&rustls::version::TLS13], None),
        ))
        .unwrap();
    let second = ca.leaf("second");
    install(
        &second,
        &tmp.path().join("server.crt"),
        &tmp.path().join("server.key"),
    );
    wait_for_cert(&rt, public, &ca.pem(), &second.der);
    wait_for_cert(&rt, s3, &ca.pem(), &second.der);
    assert_eq!(rt.block_on(tlsc::h2_get(open, "/healthz")), 200);

    // SIGHUP: a node that would not look at its files for an hour reloads at once.
    let tmp2 = tempfile::tempdir().unwrap();
    let node2 = tls_node("tls-hup", tmp2.path(), &first, 3600);
    let (public2, _) = addrs(&node2);
    let third = ca.leaf("third");
    install(
        &third,
        &tmp2.path().join("server.crt"),
        &tmp2.path().join("server.key"),
    );
    signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
    wait_for_cert(&rt, public2, &ca.pem(), &third.der);
    // The other node got the signal too: its files had not changed, it keeps serving.
    wait_for_cert(&rt, public, &ca.pem(), &second.der);
    drop((node, node2));
}

#[test]
fn mutual_tls_between_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("cluster CA");
    std::fs::write(tmp.path().join("ca.crt"), ca.pem()).unwrap();
    let mtls = |tag: &str, seed: Option<&TestNode>| {
        let leaf = ca.leaf(tag);
        let (cert, key) = (
            tmp.path().join(format!("{tag}.crt")),
            tmp.path().join(format!("{tag}.key")),
        );
        install(&leaf, &cert, &key);
        let seed = seed.map(|s| cluster_addr(s).to_string());
        let ca_path = tmp.path().join("ca.crt");
        TestNode::start_with(tag, |c: &mut Config| {
            local_origin(c);
            c.cluster.listen = Some("127.0.0.1:0".parse().unwrap());
            c.cluster.gossip_interval_ms = 100;
            c.cluster.secret = Some(Secret(SECRET.into()));
            c.cluster.join = seed.into_iter().collect();
            c.tls.cluster_ca = Some(ca_path);
            c.tls.cluster_cert = Some(cert);
            c.tls.cluster_key = Some(key);
        })
    };
    let a = mtls("mtls-a", None);
    let b = mtls("mtls-b", Some(&a));
    wait_until("a and b see each other", || {
        alive(&a).len() == 2 && alive(&b).len() == 2
    });
    // Writes through either node are read through the other: proxying and replica
    // pushes go over mutual TLS.
    for (writer, reader) in [(&a, &b), (&b, &a)] {
        for i in 0..4 {
            write_then_read(writer, reader, format!("over mutual TLS {i}").as_bytes());
        }
    }
    assert!(
        a.metric("nearcache_cluster_proxied_requests_total")
            + b.metric("nearcache_cluster_proxied_requests_total")
            > 0.0
    );

    let rt = tlsc::rt();
    let both: &[&'static rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    rt.block_on(async {
        // Without a client certificate, or with one of another CA: no HTTP answer.
        let other = pki::Ca::new("other CA").leaf("intruder");
        for client_cert in [
            None,
            Some((other.cert_pem.as_str(), other.key_pem.as_str())),
        ] {
            let cfg = tlsc::config(&ca.pem(), &[b"http/1.1"], both, client_cert);
            match tlsc::connect(cluster_addr(&a), cfg).await {
                Err(_) => {}
                // TLS 1.3: the client finishes first; the server refuses the certificate
                // before any request is read.
                Ok(s) => assert!(
                    tlsc::h1_get(s, CHANGES)
                        .await
                        .map_or(true, |l| l.is_empty()),
                    "served without a good client certificate"
                ),
            }
        }
        // Plain TCP to the private address: no HTTP answer either.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(cluster_addr(&a))
            .await
            .unwrap();
        tcp.write_all(b"GET /_nc/v1/changes HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert!(!answer.starts_with(b"HTTP/"));
        // A client with a certificate of the cluster CA gets as far as the cluster
        // secret: unsigned, it is refused with 401.
        let member = ca.leaf("tool");
        let cfg = tlsc::config(
            &ca.pem(),
            &[b"http/1.1"],
            both,
            Some((&member.cert_pem, &member.key_pem)),
        );
        let s = tlsc::connect(cluster_addr(&a), cfg).await.unwrap();
        assert_eq!(
            tlsc::h1_get(s, CHANGES).await.unwrap(),
            "HTTP/1.1 401 Unauthorized"
        );
    });
}

// ---- JWT ----------------------------------------------------------------------------

mod jwtk {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

    /// An ES256 key made at test time: the public PEM a node gets, tokens signed with it.
    pub struct Key {
        private: String,
        pub public_pem: String,
    }

    impl Key {
        pub fn new() -> Key {
            let k = rcgen::KeyPair::generate().unwrap();
            Key {
                private: k.serialize_pem(),
                public_pem: k.public_key_pem(),
            }
        }

        pub fn token(&self, claims: serde_json::Value) -> String {
            let key = EncodingKey::from_ec_pem(self.private.as_bytes()).unwrap();
            encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
        }
    }

    pub fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }
}

#[test]
fn jwt_guards_the_native_api() {
    use serde_json::json;
    let tmp = tempfile::tempdir().unwrap();
    let key = jwtk::Key::new();
    let key_path = tmp.path().join("jwt.pub");
    std::fs::write(&key_path, &key.public_pem).unwrap();
    let mut node = TestNode::start_with("jwt", |c: &mut Config| {
        local_origin(c);
        c.server.shards = 1;
        c.auth.jwt_key = Some(key_path.clone());
        c.auth.audience = Some("nearcache".into());
        c.auth.leeway_secs = 5;
    });
    let token = |claims: serde_json::Value| {
        let mut c = json!({ "aud": "nearcache", "exp": jwtk::now() + 300 });
        c.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        format!("Bearer {}", key.token(c))
    };
    let writer = token(json!({ "action": ["WRITE", "READ"] }));
    let reader = token(json!({ "action": "READ" }));

    // /healthz is open; /metrics too by default; everything else wants a token.
    assert_eq!(
        client().get(node.url("/healthz")).send().unwrap().status(),
        200
    );
    assert_eq!(
        client().get(node.url("/metrics")).send().unwrap().status(),
        200
    );
    let r = client().get(node.url("/api/v1/id")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(
        body["detail"].as_str().unwrap().contains("Bearer"),
        "{body}"
    );

    let id = client()
        .get(node.url("/api/v1/id"))
        .header("Authorization", &reader)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let put_as = |auth: &str, id: &str| {
        client()
            .post(node.url("/api/v1/put"))
            .header("Authorization", auth)
            .header("X-Meta-ID", id)
            .body("guarded")
            .send()
            .unwrap()
    };
    let get_as = |auth: Option<&str>, id: &str| {
        let mut r = client().get(node.url(&format!("/api/v1/get/{id}")));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send().unwrap()
    };
    // A READ token cannot write: 403 with the reason.
    let r = put_as(&reader, &id);
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"], "forbidden");
    assert!(body["detail"].as_str().unwrap().contains("WRITE"), "{body}");
    assert_eq!(put_as(&writer, &id).status(), 200);
    assert_eq!(get_as(Some(&reader), &id).text().unwrap(), "guarded");
    assert_eq!(get_as(None, &id).status(), 401);
    // Neither can delete.
    for t in [&reader, &writer] {
        let r = client()
            .post(node.url(&format!("/api/v1/delete/{id}")))
            .header("Authorization", t)
            .send()
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    // Bucket and prefix: the native API's bucket is the origin's ("" here, so only
    // tokens for every bucket), keys are ids.
    let other_bucket = token(json!({ "action": "READ", "bucket": "photos" }));
    assert_eq!(get_as(Some(&other_bucket), &id).status(), 403);
    let prefixed = token(json!({ "action": "READ", "prefix": &id[..6] }));
    assert_eq!(get_as(Some(&prefixed), &id).status(), 200);
    let elsewhere = token(json!({ "action": "READ", "prefix": "7ZZZZZ" }));
    assert_eq!(get_as(Some(&elsewhere), &id).status(), 403);
    // Expired beyond the 5 s skew, wrong audience, another key, garbage: 401, and the
    // body never repeats the token.
    let expired = token(json!({ "action": "READ", "exp": jwtk::now() - 60 }));
    let wrong_aud = token(json!({ "action": "READ", "aud": "someone-else" }));
    let other_key = format!(
        "Bearer {}",
        jwtk::Key::new()
            .token(json!({ "aud": "nearcache", "exp": jwtk::now() + 60, "action": "READ" }))
    );
    for (t, why) in [
        (&expired, "expired"),
        (&wrong_aud, "audience"),
        (&other_key, "signature"),
        (&"Bearer not.a.jwt".to_string(), "malformed"),
    ] {
        let r = get_as(Some(t), &id);
        assert_eq!(r.status(), 401, "{why}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        let body = r.text().unwrap();
        assert!(body.contains(why), "{why}: {body}");
        assert!(
            !body.contains(&t[7..t.len().min(30)]),
            "the refusal repeats the token: {body}"
        );
    }
    // Admin routes need a token for every bucket; /metrics counts the outcomes.
    assert_eq!(
        client()
            .get(node.url("/api/v1/stats"))
            .send()
            .unwrap()
            .status(),
        401
    );
    let stats = |t: &str| {
        client()
            .get(node.url("/api/v1/stats"))
            .header("Authorization", t)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(stats(&reader), 200);
    assert_eq!(stats(&other_bucket), 403);
    let m = node.metric("nearcache_auth_requests_total");
    assert!(m >= 15.0, "{m}");
    let text = client()
        .get(node.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains("nearcache_auth_requests_total{result=\"expired\"} 1"),
        "{text}"
    );

    // With auth.metrics_token, /metrics wants a token too; /healthz never does.
    node.restart(|c: &mut Config| {
        local_origin(c);
        c.server.shards = 1;
        c.auth.jwt_key = Some(key_path.clone());
        c.auth.audience = Some("nearcache".into());
        c.auth.metrics_token = true;
    });
    assert_eq!(
        client().get(node.url("/metrics")).send().unwrap().status(),
        401
    );
    assert_eq!(
        client().get(node.url("/healthz")).send().unwrap().status(),
        200
    );
    let r = client()
        .get(node.url("/metrics"))
        .header("Authorization", &reader)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The object written before the restart is still there for a reader.
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .header("Authorization", &reader)
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "guarded");
}

// ---- Origin over TLS with a private CA ----------------------------------------------

/// A TLS terminator in front of `upstream` (the test S3 server): an `https://` S3
/// endpoint whose certificate only `ca` vouches for. Stops with its runtime.
fn tls_proxy(
    leaf: &pki::Leaf,
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::runtime::Runtime) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (addr, rt)
}

#[test]
fn origin_over_https_trusts_the_configured_ca_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new("private S3 CA");
    let ca_path = tmp.path().join("s3-ca.crt");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let upstream: std::net::SocketAddr = nearcache_s3::testutil::s3_target()
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("the test S3 endpoint is http://ip:port");
    let (proxy, _rt) = tls_proxy(&ca.leaf("s3"), upstream);
    let https = format!("https://{proxy}");

    // Trusting the bundle: the bucket is created and writes reach S3 through TLS.
    let node = TestNode::start_with("s3-ca", |c: &mut Config| {
        c.server.shards = 1;
        c.origin.endpoint = Some(https.clone());
        c.origin.ca_bundle = Some(ca_path.clone());
    });
    let id = new_id(&node);
    let r = put(&node, &id, b"over https".to_vec(), &[("X-Meta-Sync", "1")]);
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let (body, _) = node.s3().get(&id).expect("the object reached S3");
    assert_eq!(body, b"over https");

    // Without it, the system's roots do not know the private CA: the read-through fails
    // with an origin error, nothing is served.
    let bucket = node.bucket.clone();
    let plain = TestNode::start_with("s3-noca", |c: &mut Config| {
        c.server.shards = 1;
        c.origin.endpoint = Some(https.clone());
        c.origin.bucket = Some(bucket.clone());
        c.origin.create_bucket = false;
        c.origin.max_attempts = 1;
    });
    let r = client()
        .get(plain.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    // A bundle that is not PEM stops the start with the file named.
    std::fs::write(tmp.path().join("bad.crt"), "nope").unwrap();
    let mut cfg = test_config(&tmp.path().join("bad"), &node.bucket);
    cfg.origin.ca_bundle = Some(tmp.path().join("bad.crt"));
    let e = nearcache::start(cfg)
        .err()
        .expect("a bad CA bundle is refused");
    assert!(format!("{e:#}").contains("bad.crt"), "{e:#}");
}

/// The client CLI sends a bearer token (`--token`) to a node that requires JWTs; without
/// one it is refused.
#[test]
fn the_cli_sends_a_token() {
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let jwt = jwtk::Key::new();
    let key_path = tmp.path().join("jwt.pub");
    std::fs::write(&key_path, &jwt.public_pem).unwrap();
    let node = TestNode::start_with("cli-jwt", |c: &mut Config| {
        local_origin(c);
        c.server.shards = 1;
        c.auth.jwt_key = Some(key_path.clone());
    });
    let token = jwt.token(serde_json::json!({
        "exp": jwtk::now() + 300, "action": ["READ", "WRITE"]
    }));
    let body = tmp.path().join("in.bin");
    std::fs::write(&body, b"with a token").unwrap();
    let nc = |args: &[&str], extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_nearcache"))
            .args(args)
            .args(["--server", &node.base])
            .args(extra)
            .env_remove("NEARCACHE_SERVER")
            .env_remove("NEARCACHE_TOKEN")
            .output()
            .unwrap()
    };
    let body_arg = body.to_str().unwrap();
    // No token: the node refuses (401).
    let out = nc(&["put", body_arg, "--json"], &[]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // With one: the object goes in and comes back.
    let out = nc(&["put", body_arg, "--json"], &["--token", &token]);
    assert!(out.status.success(), "{out:?}");
    let put: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = put["id"].as_str().unwrap();
    let out = nc(&["get", id, "-o", "-"], &["--token", &token]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"with a token");
}

/// JWT on the cache operations and the cachenator-compatible endpoints, with cachenator's
/// method-to-action rule (GET: READ, POST: WRITE, DELETE: DELETE) scoped by bucket and
/// key or prefix.
#[test]
fn jwt_guards_cache_operations_and_cachenator_endpoints() {
    use serde_json::json;
    let tmp = tempfile::tempdir().unwrap();
    let key = jwtk::Key::new();
    let key_path = tmp.path().join("jwt.pub");
    std::fs::write(&key_path, &key.public_pem).unwrap();
    let node = TestNode::start_with("jwt-ops", |c: &mut Config| {
        local_origin(c);
        c.server.shards = 1;
        c.auth.jwt_key = Some(key_path.clone());
    });
    let token = |claims: serde_json::Value| {
        let mut c = json!({ "exp": jwtk::now() + 300 });
        c.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        format!("Bearer {}", key.token(c))
    };
    let reader = token(json!({ "action": "READ" }));
    let writer = token(json!({ "action": ["READ", "WRITE"] }));
    let photos_a =
        token(json!({ "action": ["READ", "WRITE", "DELETE"], "bucket": "photos", "prefix": "a/" }));
    let call = |method: reqwest::Method, path: &str, auth: Option<&str>| {
        let mut r = client().request(method, node.url(path));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send().unwrap().status().as_u16()
    };
    use reqwest::Method as M;
    // Cache operations.
    assert_eq!(
        call(
            M::POST,
            "/api/v1/invalidate?key=01J0000000000000000000000A",
            None
        ),
        401
    );
    assert_eq!(
        call(
            M::POST,
            "/api/v1/invalidate?key=01J0000000000000000000000A",
            Some(&reader)
        ),
        403
    );
    assert_eq!(
        call(
            M::POST,
            "/api/v1/invalidate?key=01J0000000000000000000000A",
            Some(&writer)
        ),
        200
    );
    assert_eq!(
        call(
            M::POST,
            "/api/v1/invalidate?bucket=photos&prefix=a/x",
            Some(&photos_a)
        ),
        200
    );
    assert_eq!(
        call(
            M::POST,
            "/api/v1/invalidate?bucket=photos&prefix=b/",
            Some(&photos_a)
        ),
        403
    );
    assert_eq!(
        call(M::POST, "/api/v1/invalidate?bucket=photos", Some(&photos_a)),
        403,
        "a whole bucket is beyond a prefix grant"
    );
    assert_eq!(
        call(
            M::POST,
            "/api/v1/invalidate?bucket=video&key=a/1",
            Some(&photos_a)
        ),
        403
    );
    assert_eq!(
        call(
            M::POST,
            "/api/v1/jobs/delete?bucket=photos&prefix=a/",
            Some(&writer)
        ),
        403,
        "a delete job needs DELETE"
    );
    assert_eq!(
        call(
            M::POST,
            "/api/v1/jobs/prewarm?bucket=photos&prefix=a/",
            Some(&reader)
        ),
        403,
        "a prewarm needs WRITE"
    );
    assert_eq!(call(M::GET, "/api/v1/jobs", None), 401);
    assert_eq!(call(M::GET, "/api/v1/jobs", Some(&reader)), 200);
    assert_eq!(
        call(M::DELETE, "/api/v1/jobs/nosuchjob", Some(&photos_a)),
        403,
        "cancelling needs a grant on every bucket"
    );
    assert_eq!(
        call(M::DELETE, "/api/v1/jobs/nosuchjob", Some(&writer)),
        404
    );
    // cachenator endpoints.
    assert_eq!(call(M::GET, "/get?bucket=photos&key=a/1", None), 401);
    assert_eq!(
        call(M::GET, "/get?bucket=photos&key=b/1", Some(&photos_a)),
        403
    );
    assert_eq!(
        call(M::GET, "/list?bucket=video&prefix=a/", Some(&photos_a)),
        403
    );
    assert_eq!(
        call(M::DELETE, "/delete?bucket=photos&key=a/1", Some(&writer)),
        403
    );
    assert_eq!(
        call(M::POST, "/invalidate?bucket=photos&key=a/1", Some(&reader)),
        403
    );
    assert_eq!(
        call(
            M::POST,
            "/invalidate?bucket=photos&key=a/1",
            Some(&photos_a)
        ),
        200
    );
    assert_eq!(
        call(M::POST, "/prewarm?bucket=photos&prefix=b/", Some(&photos_a)),
        403
    );
    let r = client()
        .post(node.url("/upload?bucket=photos&path=b"))
        .header("Authorization", &photos_a)
        .header("content-type", "multipart/form-data; boundary=x")
        .body("--x--\r\n")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "an upload outside the grant's prefix");
}

/// The node-to-node request anti-entropy batches small bodies with (`POST
/// /_nc/v1/replicas`): only the keys asked for and held, only up to `max` bytes each,
/// each body whole; a request that is not what it should be is a 400 that says why.
#[test]
fn batched_copies_answer_only_what_was_asked() {
    use base64::Engine;
    let a = cluster_node("copies-a", None, None);
    let from = cluster(&a).self_id.clone();
    let (small, big, absent) = (new_id(&a), new_id(&a), new_id(&a));
    let small_body: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let big_body = vec![9u8; 20_000];
    let level0 = [("X-Meta-ConsistencyLevel", "0")];
    assert_eq!(put(&a, &small, small_body.clone(), &level0).status(), 200);
    assert_eq!(put(&a, &big, big_body.clone(), &level0).status(), 200);

    let url = format!("http://{}/_nc/v1/replicas", cluster_addr(&a));
    let ask = |max: u64| -> Vec<(String, u64, Vec<u8>)> {
        let r = client()
            .post(&url)
            .headers(peer_headers(&from, "nearcache", None))
            .json(&serde_json::json!({ "keys": [&small, &big, &absent], "max": max }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().unwrap();
        let mut copies: Vec<(String, u64, Vec<u8>)> = v["copies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let body = base64::engine::general_purpose::STANDARD
                    .decode(c["body"].as_str().unwrap())
                    .unwrap();
                let meta = &c["meta"];
                (
                    meta["key"].as_str().unwrap().to_owned(),
                    meta["size"].as_u64().unwrap(),
                    body,
                )
            })
            .collect();
        copies.sort();
        copies
    };
    assert_eq!(
        ask(16 << 10),
        vec![(small.clone(), 1000, small_body.clone())]
    );
    let mut both = vec![
        (small.clone(), 1000, small_body),
        (big.clone(), 20_000, big_body),
    ];
    both.sort();
    assert_eq!(ask(1 << 20), both);

    for bad in ["not json", r#"{"keys": "k", "max": 1}"#, r#"{"keys": []}"#] {
        let r = client()
            .post(&url)
            .headers(peer_headers(&from, "nearcache", None))
            .body(bad)
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let text = r.text().unwrap();
        assert!(text.contains("invalid request"), "{bad}: {text}");
    }
}
