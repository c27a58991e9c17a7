//! HTTP/2 abuse against a node (h2c on the public listener): a rapid-reset flood (open a
//! stream, cancel it, 20,000 times) and a CONTINUATION flood (a header block that never
//! ends, which must be cut off). Other clients must keep being answered and the node must
//! stay healthy. Each check prints what it saw.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Well-behaved requests while the abuse runs: (answered within 2 s, total).
fn probe(node: &TestNode, n: usize) -> (usize, usize) {
    let mut ok = 0;
    for _ in 0..n {
        let t = Instant::now();
        let r = client().get(node.url("/api/v1/ping")).send();
        if r.is_ok_and(|r| r.status() == 200) && t.elapsed() < Duration::from_secs(2) {
            ok += 1;
        }
    }
    (ok, n)
}

#[test]
fn rapid_reset_flood_is_cut_and_others_are_served() {
    let node = TestNode::start("h2reset");
    let addr = node.base.trim_start_matches("http://").to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (opened, cut) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut client = client;
        let mut opened = 0u32;
        let mut cut = false;
        for _ in 0..20_000 {
            let ready = tokio::time::timeout(Duration::from_secs(5), client.clone().ready()).await;
            let Ok(Ok(c)) = ready else {
                cut = true;
                break;
            };
            client = c;
            let req = http::Request::get(format!("http://{addr}/api/v1/ping"))
                .body(())
                .unwrap();
            match client.send_request(req, true) {
                Ok((_resp, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    opened += 1;
                }
                Err(_) => {
                    cut = true;
                    break;
                }
            }
        }
        // The server answers a flood with GOAWAY: the connection ends.
        let ended = tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .is_ok();
        (opened, cut || ended)
    });
    let (ok, n) = probe(&node, 20);
    let healthy = client()
        .get(node.url("/healthz"))
        .send()
        .is_ok_and(|r| r.status() == 200);
    println!("[chaos h2] rapid reset: {opened} streams opened and cancelled, connection ended: {cut}; others answered {ok} of {n}; healthy {healthy}");
    // hyper's h2 limits pending resets (GOAWAY ENHANCE_YOUR_CALM); what must hold is that
    // the flood costs others nothing and the node survives it.
    assert_eq!(ok, n, "other clients were not served during the flood");
    assert!(healthy, "the node is not healthy after the flood");
}

#[test]
fn continuation_flood_is_cut_and_others_are_served() {
    let node = TestNode::start("h2cont");
    let addr = node.base.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Preface, empty SETTINGS, then HEADERS on stream 1 without END_HEADERS.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let frame = |len: usize, kind: u8, flags: u8, stream: u32| {
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f
    };
    out.extend(frame(0, 0x4, 0, 0));
    // A literal header without indexing, new name: 0x40, name "x-a" (len 3), then a
    // value that the CONTINUATION frames keep extending (never ends).
    let start = [0x40u8, 0x03, b'x', b'-', b'a', 0x7f, 0xff, 0xff, 0xff, 0x0f];
    out.extend(frame(start.len(), 0x1, 0x0, 1));
    out.extend_from_slice(&start);
    let _ = s.write_all(&out);
    let chunk = vec![b'a'; 16_384];
    let t = Instant::now();
    let mut sent = 0usize;
    let mut cut = false;
    while t.elapsed() < Duration::from_secs(20) && sent < 64 << 20 {
        let mut f = frame(chunk.len(), 0x9, 0x0, 1);
        f.extend_from_slice(&chunk);
        if s.write_all(&f).is_err() {
            cut = true;
            break;
        }
        sent += chunk.len();
    }
    if !cut {
        // Everything fit into socket buffers: the server must since have answered (GOAWAY)
        // or closed. A read that times out means it is still swallowing the block.
        let mut buf = [0u8; 4096];
        cut = match s.read(&mut buf) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
    }
    let (ok, n) = probe(&node, 20);
    println!(
        "[chaos h2] CONTINUATION flood: {sent} bytes of CONTINUATION sent, cut: {cut} after {:.1?}; others answered {ok} of {n}",
        t.elapsed()
    );
    assert!(
        cut,
        "a never-ending header block of {sent} bytes was not cut off"
    );
    assert!(
        sent < 16 << 20,
        "the server read {sent} bytes of one header block"
    );
    assert_eq!(ok, n, "other clients were not served during the flood");
}
