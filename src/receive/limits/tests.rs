use super::*;
use std::io::Write;

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn reservations_wait_grow_and_release() {
    rt().block_on(async {
        let b = Budget::new(1000);
        let (mut r1, waited) = b.reserve(600, Duration::ZERO).await.unwrap();
        assert!(!waited);
        assert_eq!(b.in_use(), 600);
        assert_eq!(r1.try_grow(300), Ok(()));
        // More than the whole budget for one request: it never will be.
        assert_eq!(r1.try_grow(200), Err(Short::OverBudget));
        assert_eq!(b.try_reserve(200).err(), Some(Short::Busy));
        assert_eq!(
            b.reserve(200, Duration::from_millis(20)).await.err(),
            Some(Short::Busy)
        );
        assert_eq!(
            b.reserve(2000, Duration::from_secs(5)).await.err(),
            Some(Short::OverBudget)
        );
        // A waiter gets what is freed.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.reserve(500, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(r1);
        let (r2, waited) = waiter.await.unwrap().unwrap();
        assert!(waited);
        assert_eq!(r2.bytes(), 500);
        assert_eq!(b.peak(), 900);
        drop(r2);
        assert_eq!(b.in_use(), 0);
    });
}

#[test]
fn cover_holds_a_kept_frame_and_never_shrinks() {
    rt().block_on(async {
        let b = Budget::new(1000);
        let (mut r, _) = b.reserve(100, Duration::ZERO).await.unwrap();
        // Less than held already: nothing moves.
        assert_eq!(r.cover(60), Ok(()));
        assert_eq!((r.bytes(), b.in_use()), (100, 100));
        assert_eq!(r.cover(700), Ok(()));
        assert_eq!((r.bytes(), b.in_use()), (700, 700));
        assert_eq!(r.cover(1001), Err(Short::OverBudget));
        let other = b.try_reserve(300).unwrap();
        assert_eq!(r.cover(800), Err(Short::Busy));
        assert_eq!(b.in_use(), 1000);
        drop((r, other));
        assert_eq!(b.in_use(), 0);
    });
}

#[test]
fn inflating_holds_its_capacity_and_stops_at_the_cap_or_the_budget() {
    let data = vec![7u8; 3 << 20];
    let body = gz(&data);
    let b = Budget::new(64 << 20);
    let mut r = b.try_reserve(1024).unwrap();
    let out = gunzip_budgeted(&body, 5, 8 << 20, &mut r).unwrap();
    assert_eq!(out.len(), 5 + data.len());
    assert!(out[5..].iter().all(|&x| x == 7));
    assert!(
        r.bytes() >= out.capacity(),
        "{} < {}",
        r.bytes(),
        out.capacity()
    );
    drop(r);
    assert_eq!(b.in_use(), 0);

    let mut r = b.try_reserve(1024).unwrap();
    assert_eq!(
        gunzip_budgeted(&body, 0, 1 << 20, &mut r),
        Err(InflateError::TooLarge(1 << 20))
    );
    assert!(r.bytes() <= (1 << 20) + 1);

    let small = Budget::new(2 << 20);
    let mut r = small.try_reserve(1024).unwrap();
    assert_eq!(
        gunzip_budgeted(&body, 0, 8 << 20, &mut r),
        Err(InflateError::Budget(Short::OverBudget))
    );
    let shared = Budget::new(16 << 20);
    let _other = shared.try_reserve(14 << 20).unwrap();
    let mut r = shared.try_reserve(1024).unwrap();
    assert_eq!(
        gunzip_budgeted(&body, 0, 8 << 20, &mut r),
        Err(InflateError::Budget(Short::Busy))
    );
    let mut r = b.try_reserve(10).unwrap();
    assert!(matches!(
        gunzip_budgeted(b"not gzip", 0, 100, &mut r),
        Err(InflateError::Bad(_))
    ));
}

#[test]
fn caps_fit_the_open_file_limit() {
    let o = Options::default();
    assert_eq!(
        Caps::fit(&o, 2, 1 << 20),
        Caps {
            per_listener: DEFAULT_MAX_CONNS_PER_LISTENER,
            per_peer: DEFAULT_MAX_CONNS_PER_PEER
        }
    );
    let c = Caps::fit(&o, 2, 1024);
    assert_eq!(c.per_listener, (1024 - FD_RESERVE) / 2);
    assert_eq!(c.per_peer, c.per_listener);
}

#[test]
fn estimates() {
    assert_eq!(inflate_estimate(10, 1 << 30), 64 << 10);
    assert_eq!(inflate_estimate(1 << 20, 1 << 30), 8 << 20);
    assert_eq!(inflate_estimate(1 << 30, 64 << 20), 64 << 20);
}
