//! Meta commands (placeholder until the meta dispatcher lands).
use bytes::BytesMut;

use super::dispatch::{After, Ctx};
use crate::protocol::meta::{MetaCommand, MetaReply};

pub fn execute(
    _ctx: &mut Ctx<'_>,
    cmd: MetaCommand,
    _reply: &MetaReply,
    _out: &mut BytesMut,
) -> After {
    match cmd {}
}
