//! What an authenticated peer can make a node hold: streams and receive windows are
//! bounded (DESIGN.md section 4: a peer is trusted to be a member, not to be well-behaved).

use super::*;

/// Whether `f` is ready at its first poll (a zero timeout polls it once, then gives up).
async fn ready_at_once<F: Future>(f: F) -> bool {
    tokio::time::timeout(Duration::ZERO, f).await.is_ok()
}

/// node-a's connection to node-b, and node-b's side of it (which the caller keeps, and
/// may leave unread).
async fn connected_pair() -> (PeerConn, PeerConn) {
    let ca = generate_ca().expect("CA");
    let (a, _) = bind(identity(&ca, "node-a"));
    let (b, b_addr) = bind(identity(&ca, "node-b"));
    let accepting = accept_in_background(Arc::new(b));
    let dialed = within("connect", a.connect(b_addr, "node-b"))
        .await
        .expect("connect");
    let accepted = within("accept", accepting).await.unwrap().unwrap();
    (dialed, accepted)
}

#[tokio::test]
async fn a_peer_may_open_only_a_few_unidirectional_streams_and_no_bidirectional_one() {
    let (dialed, _accepted) = connected_pair().await;
    // quinn's default is 100 of each; a peer is trusted to be a member, not to be
    // well-behaved, so the node allows what the protocol uses and no more. (Opening a
    // stream beyond the peer's limit waits locally for the peer to allow more: it is
    // pending at once, whatever the timing.)
    assert!(
        !ready_at_once(dialed.conn.open_bi()).await,
        "no bidirectional stream"
    );
    let mut open = Vec::new();
    for _ in 0..MAX_UNI_STREAMS {
        let mut s = within("open_uni", dialed.conn.open_uni())
            .await
            .expect("a stream within the limit");
        s.write_all(b"x").await.expect("write");
        open.push(s);
    }
    assert!(
        !ready_at_once(dialed.conn.open_uni()).await,
        "one more than {MAX_UNI_STREAMS} at once"
    );
}

/// Writes into `streams` in turn until `total` bytes went out (each write returns as soon
/// as the peer's flow control lets it take some), failing after a generous deadline.
/// Returns the bytes each stream took.
async fn write_until(streams: &mut [quinn::SendStream], total: usize) -> Vec<usize> {
    let chunk = vec![0u8; 256 << 10];
    let mut sent = vec![0usize; streams.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sent.iter().sum::<usize>() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {total} bytes taken within 60 s",
            sent.iter().sum::<usize>()
        );
        for (s, n) in streams.iter_mut().zip(sent.iter_mut()) {
            let want = chunk.len().min(total - (*n).min(total));
            if let Ok(w) =
                tokio::time::timeout(Duration::from_millis(50), s.write(&chunk[..want])).await
            {
                *n += w.expect("write");
            }
        }
    }
    sent
}

#[tokio::test]
async fn a_peer_can_make_the_node_buffer_only_its_receive_windows() {
    // node-b never reads what node-a sends: everything node-a gets to send is held there.
    let (dialed, _accepted) = connected_pair().await;
    let mut streams = Vec::new();
    for _ in 0..MAX_UNI_STREAMS {
        streams.push(
            within("open_uni", dialed.conn.open_uni())
                .await
                .expect("open"),
        );
    }
    // quinn's default connection window is unbounded: four streams could fill four
    // stream windows. Here the connection's window is the bound, and each stream's.
    let window = CONNECTION_RECEIVE_WINDOW as usize;
    let sent = write_until(&mut streams, window).await;
    assert!(
        sent.iter().all(|&n| n <= STREAM_RECEIVE_WINDOW as usize),
        "a stream took more than its window: {sent:?}"
    );
    assert_eq!(sent.iter().sum::<usize>(), window);
    // And not a byte more, however long the sender tries (a bound to stop trying, not a
    // timing claim: without the window, the next write is taken at once).
    for s in &mut streams {
        let more = tokio::time::timeout(Duration::from_millis(300), s.write(b"x")).await;
        assert!(
            more.is_err(),
            "a byte beyond the connection window was taken"
        );
    }
}
