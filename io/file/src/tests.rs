use super::*;

fn run<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .expect("build runtime")
        .block_on(f)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn roundtrip(dev: AnyDevice, dir: &Path) {
    let path = dir.join("f");
    let file = dev.create(&path).await.unwrap();
    // Two aligned blocks at offset 4096, the second with an unaligned tail padded.
    let data = pattern(3 * 4096 + 100, 7);
    let mut buf = AlignedBuf::with_capacity(data.len());
    assert_eq!(buf.extend_from_slice(&data), data.len());
    buf.pad_to_alignment();
    assert_eq!(buf.len(), 4 * 4096);
    let (res, buf) = file.write_all_at(buf, 4096).await;
    res.unwrap();
    assert_eq!(buf.len(), 4 * 4096);
    file.sync_data().await.unwrap();
    drop(file);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 5 * 4096);

    let file = dev.open(&path).await.unwrap();
    let buf = AlignedBuf::with_capacity(8 * 4096);
    // read_full_at stops at EOF.
    let (res, buf) = file.read_full_at(buf, 4096, 8 * 4096).await;
    assert_eq!(res.unwrap(), 4 * 4096);
    assert_eq!(&buf.as_slice()[..data.len()], &data[..]);
    assert!(buf.as_slice()[data.len()..].iter().all(|&b| b == 0));
    // A single read of one block in the middle.
    let (res, buf) = file
        .read_at(AlignedBuf::with_capacity(4096), 2 * 4096)
        .await;
    assert_eq!(res.unwrap(), 4096);
    assert_eq!(buf.as_slice(), &data[4096..8192]);
    // Reading past EOF gives 0.
    let (res, buf) = file.read_full_at(buf, 16 * 4096, 4096).await;
    assert_eq!(res.unwrap(), 0);
    assert!(buf.is_empty());
    drop(file);
    dev.remove(&path).await.unwrap();
    assert!(!path.exists());
    assert!(dev.open(&path).await.is_err());
}

#[test]
fn uring_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let dev = AnyDevice::new(DeviceKind::Uring);
        assert_eq!(dev.active_kind(), DeviceKind::Uring);
        roundtrip(dev, dir.path()).await;
    });
}

#[test]
fn syscall_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let dev = AnyDevice::new(DeviceKind::Syscall);
        assert_eq!(dev.active_kind(), DeviceKind::Syscall);
        roundtrip(dev, dir.path()).await;
    });
}

#[test]
fn auto_picks_a_concrete_kind() {
    let dev = AnyDevice::new(DeviceKind::Auto);
    let expected = if monoio::utils::detect_uring() {
        DeviceKind::Uring
    } else {
        DeviceKind::Syscall
    };
    assert_eq!(dev.active_kind(), expected);
}

/// tmpfs may refuse O_DIRECT: both devices must then fall back to buffered I/O.
#[test]
fn tmpfs_fallback() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return;
    }
    for kind in [DeviceKind::Uring, DeviceKind::Syscall] {
        let dir = tempfile::tempdir_in(shm).unwrap();
        run(async {
            roundtrip(AnyDevice::new(kind), dir.path()).await;
        });
    }
}
