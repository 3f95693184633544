//! Meta command semantics, end to end: a real server in this process (port 0, a manual
//! clock so TTLs are exact), spoken to over TCP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::debug::slab_class;
use crate::clock::ManualClock;
use crate::config::Config;
use crate::server::{Server, ShutdownHandle};

const START_MS: u64 = 1_800_000_000_000;

struct TestServer {
    addr: std::net::SocketAddr,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<()>>,
    clock: Arc<ManualClock>,
}

impl TestServer {
    fn start(tune: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config {
            listen: vec![crate::config::Listener {
                addr: "127.0.0.1:0".parse().expect("addr"),
                tls: crate::config::ListenerTls::Off,
            }],
            threads: 1,
            ..Config::default()
        };
        tune(&mut config);
        let clock = Arc::new(ManualClock::new(START_MS));
        let server = Server::bind(config, clock.clone()).expect("bind");
        let addr = server.local_addrs()[0];
        let handle = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.run(false).expect("run"));
        TestServer {
            addr,
            handle,
            thread: Some(thread),
            clock,
        }
    }

    fn client(&self) -> Client {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Client { stream }
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Client {
    stream: TcpStream,
}

impl Client {
    /// Sends `req` (with `\n` written as line ends, `\r\n` added) followed by `mn`, and
    /// returns everything answered before the `MN`, lines joined by `|`.
    fn q(&mut self, req: &str) -> String {
        let mut wire = req.replace('\n', "\r\n");
        wire.push_str("\r\nmn\r\n");
        self.raw(wire.as_bytes())
    }

    fn raw(&mut self, wire: &[u8]) -> String {
        self.stream.write_all(wire).expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !(got.ends_with(b"MN\r\n") && (got.len() == 4 || got.ends_with(b"\nMN\r\n"))) {
            let n = self.stream.read(&mut buf).expect("read");
            assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        got.truncate(got.len() - 4);
        let text = String::from_utf8_lossy(&got).into_owned();
        let text = text.strip_suffix("\r\n").unwrap_or(&text);
        text.replace("\r\n", "|")
    }

    /// The value of one `stats` counter.
    fn stat(&mut self, name: &str) -> u64 {
        let all = self.q("stats");
        all.split('|')
            .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no stat {name} in {all}"))
    }

    /// The CAS `mg` reports.
    fn cas(&mut self, key: &str) -> u64 {
        let line = self.q(&format!("mg {key} c"));
        line.strip_prefix("HD c")
            .and_then(|c| c.split(' ').next())
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no cas in {line}"))
    }
}

#[test]
fn get_flags_quiet_and_misses() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    assert_eq!(c.q("mg foo v"), "EN");
    assert_eq!(c.q("mg foo v q"), "");
    assert_eq!(c.q("mg foo k Oab v"), "EN kfoo Oab");
    assert_eq!(c.q("ms foo 2 F7 T100\nhi"), "HD");
    assert_eq!(c.q("mg foo"), "HD");
    assert_eq!(c.q("mg foo s v f t k O1 q"), "VA 2 s2 f7 t100 kfoo O1|hi");
    assert_eq!(c.q("mg foo Oabc k s"), "HD Oabc kfoo s2");
    let o32 = format!("O{}", "o".repeat(31));
    assert_eq!(c.q(&format!("mg foo {o32}")), format!("HD {o32}"));
    assert_eq!(
        c.q(&format!("mg foo {o32}x")),
        "CLIENT_ERROR opaque token too long"
    );
    assert_eq!(
        c.q(&format!("mg nope {o32}x q")),
        "CLIENT_ERROR opaque token too long"
    );
    assert_eq!(c.q("mg foo v v"), "CLIENT_ERROR duplicate flag");
    // A pipeline of quiet gets: only hits answer.
    assert_eq!(c.q("mg foo v q\nmg nope v q\nmg foo s q"), "VA 2|hi|HD s2");
}

#[test]
fn conditional_value_fetch() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    c.q("ms k 2 T100\nhi");
    let cas = c.cas("k");
    // The client's copy is current: HD, no value; other flags as usual.
    assert_eq!(c.q(&format!("mg k C{cas} v s")), "HD s2");
    assert_eq!(c.q(&format!("mg k C{cas} v c")), format!("HD c{cas}"));
    assert_eq!(c.q(&format!("mg k C{} v s", cas + 1)), "VA 2 s2|hi");
    // Without v nothing changes, and T applies whether or not the CAS matches.
    assert_eq!(c.q(&format!("mg k C{cas} t")), "HD t100");
    assert_eq!(c.q(&format!("mg k C{cas} v T300 t")), "HD t300");
    // A miss is a miss; an item N creates is compared with the CAS it was created with.
    assert_eq!(c.q("mg nope C1 v"), "EN");
    assert_eq!(c.q("mg viv N30 E77 C77 v s"), "HD s0 W");
}

#[test]
fn conditional_value_fetch_with_cas_off() {
    let s = TestServer::start(|c| c.cas_enabled = false);
    let mut c = s.client();
    c.q("ms k 2\nhi");
    assert_eq!(c.q("mg k C0 v"), "HD", "every CAS shows as 0");
    assert_eq!(c.q("mg k C1 v"), "VA 2|hi");
}

#[test]
fn hit_before_last_access_and_no_bump() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    c.q("ms k 1\nx");
    assert_eq!(c.q("mg k u h"), "HD h0");
    assert_eq!(c.q("mg k h"), "HD h0");
    assert_eq!(c.q("mg k u h"), "HD h1");
    s.advance(5);
    assert_eq!(c.q("mg k l"), "HD l5");
}

#[test]
fn touch_applies_where_it_stands_and_keeps_cas() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    c.q("ms k 1 T100\nx");
    let cas = c.cas("k");
    assert_eq!(c.q("mg k t T300"), "HD t100");
    assert_eq!(c.q("mg k T400 t"), "HD t400");
    assert_eq!(c.q("mg k t"), "HD t400");
    assert_eq!(c.cas("k"), cas, "standalone: a touch keeps the CAS");
    assert_eq!(c.q("mg k T0 t"), "HD t-1");
    assert_eq!(c.stat("touch_hits"), 3);
    assert_eq!(c.stat("cmd_touch"), 3);
    // Returned this once, then gone.
    assert_eq!(c.q("mg k T-1 v"), "VA 1|x");
    assert_eq!(c.q("mg k v"), "EN");
    // A miss with T counts as a get miss, as in memcached.
    let misses = c.stat("get_misses");
    assert_eq!(c.q("mg k T10"), "EN");
    assert_eq!(c.stat("get_misses"), misses + 1);
}

#[test]
fn vivify_and_recache_tokens() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    // First client wins an empty item, later ones see Z.
    assert_eq!(c.q("mg viv N30 s t v"), "VA 0 s0 t30 W|");
    assert_eq!(c.q("mg viv N30 s v"), "VA 0 s0 Z|");
    let cas = c.cas("viv");
    assert_eq!(c.q(&format!("ms viv 2 C{cas} T100\nok")), "HD");
    assert_eq!(c.q("mg viv N30 v"), "VA 2|ok");
    // R: the remaining TTL (100) is below 200: one winner.
    assert_eq!(c.q("mg viv R200 v"), "VA 2 W|ok");
    assert_eq!(c.q("mg viv R200 v"), "VA 2 Z|ok");
    assert_eq!(c.q("mg viv R50"), "HD Z");
    // A TTL of 0 never triggers a recache.
    c.q("ms forever 1\nx");
    assert_eq!(c.q("mg forever R100"), "HD");
    // t before N shows the vivified item's TTL before N applies.
    assert_eq!(c.q("mg viv2 t N30"), "HD t-1 W");
    assert_eq!(c.q("mg viv2 t"), "HD t30 Z");
}

#[test]
fn serve_stale() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    c.q("ms st 3 T100\nmoo");
    let old = c.cas("st");
    assert_eq!(c.q("md st I T30"), "HD");
    assert_eq!(c.q("mg st s t v"), "VA 3 s3 t30 X W|moo");
    assert_eq!(c.q("mg st v"), "VA 3 Z X|moo");
    let cas = c.cas("st");
    assert_ne!(cas, old, "invalidation gives a new CAS");
    // An older CAS with I stores, stale, keeping TTL and token; without I it fails.
    assert_eq!(c.q(&format!("ms st 1 C{old} T90\nf")), "EX");
    assert_eq!(c.q(&format!("ms st 1 I C{old} T90\nf")), "HD");
    assert_eq!(c.q("mg st t v"), "VA 1 t30 Z X|f");
    let cas = c.cas("st");
    assert_eq!(c.q(&format!("ms st 1 C{cas} T90\ng")), "HD");
    assert_eq!(c.q("mg st t v"), "VA 1 t90|g");
}

#[test]
fn set_modes_and_cas() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    assert_eq!(c.q("ms m 2 ME\naa"), "HD");
    assert_eq!(c.q("ms m 2 ME\nbb"), "NS");
    assert_eq!(c.q("ms m 2 MA s\ncc"), "HD s4");
    assert_eq!(c.q("ms m 2 MP s k\nzz"), "HD s6 km");
    assert_eq!(c.q("mg m v"), "VA 6|zzaacc");
    assert_eq!(c.q("ms nope 2 MR\nxx"), "NS");
    assert_eq!(c.q("ms nope 2 MA\nxx"), "NS");
    assert_eq!(c.q("ms m 2 MR T10\nxx"), "HD");
    assert_eq!(
        c.q("ms m 2 MZ\nxx"),
        "CLIENT_ERROR invalid mode for ms M token"
    );
    // CAS: set and replace become cas; a failure answers c0.
    let cas = c.cas("m");
    assert_eq!(c.q(&format!("ms m 1 C{} c\n1", cas + 1)), "EX c0");
    let stored = c.q(&format!("ms m 1 C{cas} c\n2"));
    let new_cas: u64 = stored
        .strip_prefix("HD c")
        .and_then(|v| v.parse().ok())
        .expect("cas");
    assert_ne!(new_cas, cas);
    assert_eq!(c.cas("m"), new_cas);
    assert_eq!(c.q("ms m 1 C0\n3"), "EX");
    assert_eq!(c.q("ms gone 1 C5\n3"), "NF");
    // add ignores C; append checks it.
    assert_eq!(c.q("ms fresh 1 ME C5\n3"), "HD");
    assert_eq!(c.q("ms fresh 1 MA C5\n4"), "EX");
    let cas = c.cas("fresh");
    assert_eq!(c.q(&format!("ms fresh 1 MA C{cas}\n4")), "HD");
    assert_eq!(c.stat("cas_hits"), 1);
    assert_eq!(c.stat("cas_badval"), 2);
    assert_eq!(c.stat("cas_misses"), 1);
    // q hides HD only.
    assert_eq!(c.q("ms m 1 q\n5\nms m 1 q ME\n6"), "NS");
    // Append with N creates a missing item with that TTL.
    assert_eq!(c.q("ms viv 2 MA N30\nhi"), "HD");
    assert_eq!(c.q("mg viv t v"), "VA 2 t30|hi");
    // E: the client's CAS.
    assert_eq!(c.q("ms e 1 E9000001 c\nx"), "HD c9000001");
    assert_eq!(c.q("mg e c"), "HD c9000001");
}

#[test]
fn too_large_and_bad_chunks() {
    let s = TestServer::start(|c| c.max_item_size = 1024);
    let mut c = s.client();
    c.q("ms big 1\nx");
    // Over -I: answered at once, the data swallowed, the old item gone.
    let data = "y".repeat(2000);
    assert_eq!(
        c.q(&format!("ms big 2000 T5\n{data}")),
        "SERVER_ERROR object too large for cache"
    );
    assert_eq!(c.q("mg big v"), "EN");
    // Just over the item size once headers count: refused the same way.
    c.q("ms edge 1\nx");
    let data = "z".repeat(1000);
    assert_eq!(
        c.q(&format!("ms edge 1000 F1\n{data}")),
        "SERVER_ERROR object too large for cache"
    );
    assert_eq!(c.q("mg edge"), "EN");
    assert_eq!(c.stat("store_too_large"), 2);
    assert_eq!(
        c.q("ms bad 2 q\nhiX"),
        "CLIENT_ERROR bad data chunk|CLIENT_ERROR bad command line format"
    );
    // Flag errors swallow the data block too.
    assert_eq!(c.q("ms x 2 zz\nhi"), "CLIENT_ERROR invalid flag");
}

#[test]
fn delete_invalidate_and_remove_value() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    assert_eq!(c.q("md nope"), "NF");
    assert_eq!(c.q("md nope q k O1"), "NF knope O1");
    c.q("ms d 1\nx");
    assert_eq!(c.q("md d k O7"), "HD kd O7");
    assert_eq!(c.q("mg d"), "EN");
    c.q("ms d 1\nx");
    let cas = c.cas("d");
    assert_eq!(c.q(&format!("md d C{}", cas + 1)), "EX");
    assert_eq!(c.q(&format!("md d C{cas} q")), "");
    assert_eq!(c.q("mg d"), "EN");
    assert_eq!(c.stat("delete_hits"), 2);
    assert_eq!(c.stat("delete_misses"), 3);
    // x: an empty value in place, flags and TTL from F and T, the CAS kept.
    c.q("ms x 3 F5 T100\nabc");
    let cas = c.cas("x");
    assert_eq!(c.q("md x x"), "HD");
    assert_eq!(c.q("mg x s f t v"), "VA 0 s0 f0 t-1|");
    assert_eq!(c.cas("x"), cas);
    assert_eq!(c.q("md x x F3 T50 I"), "HD");
    assert_eq!(c.q("mg x f t v"), "VA 0 f3 t50 X W|");
    assert_ne!(c.cas("x"), cas);
    // E on an invalidation.
    c.q("ms e 1\nx");
    assert_eq!(c.q("md e I E9000003"), "HD");
    assert_eq!(c.q("mg e c"), "HD c9000003 X W");
}

#[test]
fn arithmetic() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    assert_eq!(c.q("ma n"), "NF");
    assert_eq!(c.q("ma n q k O1"), "NF kn O1");
    c.q("ms n 2\n10");
    assert_eq!(c.q("ma n"), "HD");
    assert_eq!(c.q("ma n v"), "VA 2|12");
    assert_eq!(c.q("ma n D5 v"), "VA 2|17");
    assert_eq!(c.q("ma n MD D8 v"), "VA 1|9");
    // Shorter results are space-padded in place.
    assert_eq!(c.q("mg n s v"), "VA 2 s2|9 ");
    assert_eq!(c.q("ma n M- D100 v"), "VA 1|0");
    assert_eq!(c.q("ma n q"), "");
    assert_eq!(c.q("ma n k O9 v"), "VA 1 kn O9|2");
    assert_eq!(c.stat("incr_hits"), 5);
    assert_eq!(c.stat("decr_hits"), 2);
    assert_eq!(c.stat("incr_misses"), 2);
    // Auto-create from J, with N's TTL, where N stands relative to t.
    assert_eq!(c.q("ma viv N0 J13 v t"), "VA 2 t-1|13");
    assert_eq!(c.q("ma viv N0 J13 v"), "VA 2|14");
    assert_eq!(c.q("ma viv2 t N100 v"), "VA 1 t-1|0");
    assert_eq!(c.q("ma viv3 N100 t v"), "VA 1 t100|0");
    assert_eq!(c.q("ma viv2 T300 t"), "HD t300");
    // CAS.
    let cas = c.cas("viv");
    assert_eq!(c.q(&format!("ma viv C{} v", cas + 1)), "EX");
    let out = c.q(&format!("ma viv C{cas} c v"));
    assert!(out.starts_with("VA 2 c") && out.ends_with("|15"), "{out}");
    assert_ne!(c.cas("viv"), cas);
    assert_eq!(c.q("ma viv E9000002 c"), "HD c9000002");
    // Errors: non-numeric, wrapping, the generic flag error, a late opaque error.
    c.q("ms s 3\nabc");
    assert_eq!(
        c.q("ma s"),
        "CLIENT_ERROR cannot increment or decrement non-numeric value"
    );
    c.q("ms e 0\n");
    assert_eq!(
        c.q("ma e C1"),
        "CLIENT_ERROR cannot increment or decrement non-numeric value"
    );
    c.q("ms big 20\n18446744073709551615");
    assert_eq!(c.q("ma big v"), "VA 1|0");
    assert_eq!(c.q("ma big zz"), "CLIENT_ERROR invalid or duplicate flag");
    let long = format!("O{}", "o".repeat(32));
    assert_eq!(
        c.q(&format!("ma big {long}")),
        "CLIENT_ERROR opaque token too long"
    );
    let padded = format!("VA 20|1{}", " ".repeat(19));
    assert_eq!(c.q("mg big v"), padded, "applied anyway");
}

#[test]
fn base64_keys_round_trip() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    // "tesuto" in katakana, stored under its decoded bytes.
    assert_eq!(c.q("ms 44OG44K544OI 2 b k\npo"), "HD k44OG44K544OI b");
    assert_eq!(c.q("mg 44OG44K544OI v"), "EN");
    assert_eq!(c.q("mg 44OG44K544OI b v k"), "VA 2 k44OG44K544OI b|po");
    assert_eq!(c.q("md 44OG44K544OI b q"), "");
    assert_eq!(c.q("mg 44OG44K544OI b k"), "EN k44OG44K544OI b");
    // Any bytes, once decoded.
    assert_eq!(c.q("ms AAEgCg== 1 b\nx"), "HD");
    assert_eq!(
        c.q("ma AAEgCg== b"),
        "CLIENT_ERROR cannot increment or decrement non-numeric value"
    );
    assert_eq!(c.q("mg !!!! b"), "CLIENT_ERROR error decoding key");
}

#[test]
fn debug_and_noop() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    assert_eq!(c.q("me foo"), "EN");
    c.q("ms foo 2 T100\nhi");
    let cas = c.cas("foo");
    s.advance(3);
    assert_eq!(
        c.q("me foo"),
        format!("ME foo exp=97 la=3 cas={cas} fetch=yes cls=1 size=64")
    );
    let out = c.raw(format!("ms Zm9vYg== 1000 b F1\r\n{}\r\nmn\r\n", "v".repeat(1000)).as_bytes());
    assert_eq!(out, "HD");
    assert_eq!(
        c.q("me Zm9vYg== b x"),
        "ME Zm9vYg== exp=-1 la=0 cas=".to_string()
            + &c.cas_of_binary()
            + " fetch=no cls=12 size=1067"
    );
    assert_eq!(c.q("mn"), "MN");
    assert_eq!(c.q("mn ignored tokens"), "MN");
}

impl Client {
    fn cas_of_binary(&mut self) -> String {
        let line = self.q("mg Zm9vYg== b c");
        line.strip_prefix("HD c").expect("cas").to_string()
    }
}

#[test]
fn counters() {
    let s = TestServer::start(|_| {});
    let mut c = s.client();
    c.q("ms a 1\nx\nmg a v\nmg b v\nmg c N10\nmd a");
    // Five commands and the mn that ends the batch.
    assert_eq!(c.stat("cmd_meta"), 6);
    assert_eq!(c.stat("cmd_set"), 1);
    assert_eq!(c.stat("cmd_get"), 3);
    assert_eq!(c.stat("get_hits"), 2, "an auto-vivified item is a hit");
    assert_eq!(c.stat("get_misses"), 1);
    assert_eq!(c.stat("delete_hits"), 1);
}

#[test]
fn e_flag_and_cas_off() {
    let s = TestServer::start(|c| c.cas_enabled = false);
    let mut c = s.client();
    assert_eq!(c.q("ms k 1 c\nx"), "HD c0");
    assert_eq!(c.q("mg k c"), "HD c0");
    assert_eq!(c.q("ma n N0 c"), "HD c0");
}

#[test]
fn slab_arithmetic_matches_memcached() {
    // Sizes and classes memcached 1.6.18 reported for these items.
    let store = crate::store::Store::new(crate::store::StoreConfig::default());
    assert_eq!(store.item_size(2, 0, 0), 61);
    assert_eq!(store.item_size(3, 2, 0), 64);
    for (size, cls) in [
        (61, 1),
        (96, 1),
        (97, 2),
        (112, 2),
        (163, 4),
        (1064, 12),
        (5064, 19),
        (100_066, 32),
        (394_840, 38),
        (394_841, 39),
        (1_000_067, 39),
    ] {
        assert_eq!(slab_class(size), cls, "size {size}");
    }
}
