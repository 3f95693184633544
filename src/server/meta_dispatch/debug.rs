//! `me`, memcached's debug line for a key.

use bytes::BytesMut;

use crate::key::Key;
use crate::protocol::meta::{self, MetaReply};
use crate::server::dispatch::Ctx;

/// `me`: memcached's debug line. `cls` and `size` are what memcached's slab allocator would
/// report for an item of this shape, so that tools reading them see familiar numbers.
pub(super) fn debug(ctx: &mut Ctx<'_>, key: &Key, reply: &MetaReply, out: &mut BytesMut) {
    let now = ctx.now;
    let cas_on = ctx.shared.config.cas_enabled;
    ctx.shared.store.read(key.as_bytes(), now, false, |item| {
        let Some(i) = item else {
            out.extend_from_slice(b"EN\r\n");
            return;
        };
        out.extend_from_slice(b"ME ");
        if reply.base64 {
            meta::put_base64(i.key, out);
        } else {
            out.extend_from_slice(i.key);
        }
        let exp = if i.exptime == 0 {
            -1
        } else {
            i64::from(i.exptime) - i64::from(now)
        };
        let size = ctx
            .shared
            .store
            .item_size(i.key.len(), i.value.len(), i.flags);
        let line = format!(
            " exp={exp} la={} cas={} fetch={} cls={} size={size}\r\n",
            now.wrapping_sub(i.last_access),
            if cas_on { i.version.0 } else { 0 },
            if i.fetched { "yes" } else { "no" },
            slab_class(size),
        );
        out.extend_from_slice(line.as_bytes());
    });
}

/// The slab class memcached (default `-f 1.25 -n 48`, 1 MB pages) puts an item of `size`
/// bytes in; larger items are chunked under the largest class.
pub(super) fn slab_class(size: usize) -> usize {
    const CHUNK_MAX: f64 = 524_288.0;
    let mut chunk = 96usize;
    let mut cls = 1;
    loop {
        if chunk as f64 >= CHUNK_MAX / 1.25 {
            return cls;
        }
        let aligned = chunk.div_ceil(8) * 8;
        if size <= aligned {
            return cls;
        }
        chunk = (aligned as f64 * 1.25) as usize;
        cls += 1;
    }
}
